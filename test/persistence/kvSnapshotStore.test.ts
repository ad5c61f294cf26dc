import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MemoryBus } from '../support/MemoryBus.js';
import { connectNatsBus, type NatsBus } from '../../src/bus/NatsBus.js';
import { KvSnapshotStore } from '../../src/persistence/KvSnapshotStore.js';
import { startNatsServer, type NatsServer } from '../../src/testing/natsServer.js';
import { flowRecord, runSnapshotStoreContract } from './contract.js';

let buckets = 0;
/** A bucket per test: its entries are its own. */
const bucket = () => `snapshots${++buckets}`;

runSnapshotStoreContract('KvSnapshotStore over MemoryBus', async (options) => {
  const bus = new MemoryBus();
  const kv = await bus.keyValue(bucket());
  return {
    store: new KvSnapshotStore(kv, options),
    corrupt: async (flowId, raw) => void (await kv.put(KvSnapshotStore.key(flowId), raw)),
    second: async () => new KvSnapshotStore(kv, options),
    close: () => bus.close(),
  };
});

describe('over a real nats-server', () => {
  let server: NatsServer;

  beforeAll(async () => {
    server = await startNatsServer();
  });
  afterAll(async () => {
    await server?.close();
  });

  const connect = () => connectNatsBus({ servers: [server.url], subjectPrefix: 'snap', name: 'snapshot-store-test' });

  runSnapshotStoreContract('KvSnapshotStore over NatsBus', async (options) => {
    const name = bucket();
    const buses: NatsBus[] = [await connect()];
    const kv = await buses[0]!.keyValue(name);
    return {
      store: new KvSnapshotStore(kv, options),
      corrupt: async (flowId, raw) => void (await kv.put(KvSnapshotStore.key(flowId), raw)),
      // Another daemon: its own connection to the same bucket.
      second: async () => {
        const bus = await connect();
        buses.push(bus);
        return new KvSnapshotStore(await bus.keyValue(name), options);
      },
      close: async () => {
        await Promise.all(buses.map((b) => b.close()));
      },
    };
  });

  it('keeps the record as JSON under snapshot.<flowId> at the KV revision, and a moved-aside entry under corrupt.<flowId>', async () => {
    const bus = await connect();
    try {
      const kv = await bus.keyValue(bucket());
      const store = new KvSnapshotStore(kv);
      const record = flowRecord('flow-layout');
      const revision = await store.save(record, null);
      const entry = await kv.get('snapshot.flow-layout');
      expect(entry?.revision).toBe(revision);
      expect(entry?.json()).toEqual(record);

      await kv.put('snapshot.flow-layout', '{oops');
      await store.moveAside('flow-layout', 'not JSON');
      expect(await kv.get('snapshot.flow-layout')).toBeUndefined();
      expect((await kv.get('corrupt.flow-layout'))?.json()).toMatchObject({ flowId: 'flow-layout', reason: 'not JSON', raw: '{oops' });
      expect(await store.list()).toEqual([]);
    } finally {
      await bus.close();
    }
  });
});
