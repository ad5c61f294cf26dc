import { afterAll, beforeAll } from 'vitest';
import type { Bus } from '../../src/bus/Bus.js';
import { KvResultsStore } from '../../src/bus/KvResultsStore.js';
import { resultKey } from '../../src/bus/resultKey.js';
import { MemoryBus } from '../support/MemoryBus.js';
import { connectNatsBus } from '../../src/bus/NatsBus.js';
import { startNatsServer, type NatsServer } from '../../src/testing/natsServer.js';
import { runResultsStoreContract, type ResultsStoreUnderTest } from './resultsStoreContract.js';

/** A KvResultsStore over `bucket` of `bus`; `connect` makes another connection (another process). */
async function kvUnderTest(bus: Bus, bucket: string, connect: () => Promise<Bus>): Promise<ResultsStoreUnderTest> {
  const buses = [bus];
  const other = async () => {
    const next = await connect();
    if (next !== bus) buses.push(next);
    return new KvResultsStore(await next.keyValue(bucket));
  };
  const kv = await bus.keyValue(bucket);
  return {
    store: new KvResultsStore(kv),
    second: other,
    afterCrash: other,
    corrupt: async (key, raw) => void (await kv.put(resultKey(key), raw)),
    close: async () => {
      await Promise.all(buses.map((b) => b.close()));
    },
  };
}

runResultsStoreContract(
  'KvResultsStore over MemoryBus',
  async () => {
    const bus = new MemoryBus();
    return kvUnderTest(bus, 'results', async () => bus);
  },
);

let server: NatsServer;
let buckets = 0;
beforeAll(async () => {
  server = await startNatsServer();
});
afterAll(async () => {
  await server?.close();
});

runResultsStoreContract(
  'KvResultsStore over a real nats-server',
  async () => {
    // A prefix and bucket per test: its data is its own.
    const prefix = `r${++buckets}`;
    const connect = () => connectNatsBus({ servers: [server.url], subjectPrefix: prefix, reconnectTimeWaitMs: 100, name: `results-${prefix}` });
    return kvUnderTest(await connect(), `results${buckets}`, connect);
  },
);
