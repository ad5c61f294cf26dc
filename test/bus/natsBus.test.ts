import { jetstreamManager } from '@nats-io/jetstream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BusError } from '../../src/bus/Bus.js';
import { connectNatsBus, type NatsBus, type NatsBusOptions, type NatsBusStatus } from '../../src/bus/NatsBus.js';
import { freePort, startNatsServer, type NatsServer } from '../../src/testing/natsServer.js';
import { runBusContract, until } from './contract.js';

let server: NatsServer;
let prefixes = 0;

beforeAll(async () => {
  server = await startNatsServer();
});
afterAll(async () => {
  await server?.close();
});

function options(subjectPrefix: string, extra: Partial<NatsBusOptions> = {}): NatsBusOptions {
  return { servers: [server.url], subjectPrefix, reconnectTimeWaitMs: 100, name: `test-${subjectPrefix}`, ...extra };
}

runBusContract('NatsBus', async () => {
  // A prefix per test: its streams and buckets are its own.
  const prefix = `t${++prefixes}`;
  const buses: NatsBus[] = [await connectNatsBus(options(prefix))];
  return {
    bus: buses[0]!,
    second: async () => {
      const bus = await connectNatsBus(options(prefix));
      buses.push(bus);
      return bus;
    },
    close: async () => {
      await Promise.all(buses.map((b) => b.close()));
    },
  };
});

describe('NatsBus on a real nats-server', () => {
  it("keeps an event log's max age when a reader opens it without one, and changes it when its owner asks", async () => {
    const bus = await connectNatsBus(options('agelog'));
    const nc = await (await import('@nats-io/transport-node')).connect({ servers: [server.url] });
    const manager = await jetstreamManager(nc);
    const maxAge = async () => (await manager.streams.info('AGELOG_LOG_history')).config.max_age;
    await bus.eventLog('history', { subjects: ['agelog.flow.*.history'], maxAgeMs: 3_600_000 });
    expect(await maxAge()).toBe(3_600_000 * 1_000_000);
    await bus.eventLog('history', { subjects: ['agelog.flow.*.history'] });
    expect(await maxAge()).toBe(3_600_000 * 1_000_000);
    await bus.eventLog('history', { subjects: ['agelog.flow.*.history'], maxAgeMs: 7_200_000 });
    expect(await maxAge()).toBe(7_200_000 * 1_000_000);
    await nc.close();
    await bus.close();
  });

  it('names streams and buckets after the prefix, and two processes racing to create them both succeed', async () => {
    const [a, b] = await Promise.all([connectNatsBus(options('race')), connectNatsBus(options('race'))]);
    try {
      await Promise.all([
        a.workQueue('jobs', { deadLetterSubject: 'race.dead' }),
        b.workQueue('jobs', { deadLetterSubject: 'race.dead' }),
        a.keyValue('flows'),
        b.keyValue('flows'),
        a.eventLog('flows', { subjects: ['race.flow.>'] }),
        b.eventLog('flows', { subjects: ['race.flow.>'] }),
      ]);
      const jsm = await jetstreamManager(a.connection);
      const wq = await jsm.streams.info('RACE_WQ_jobs');
      expect(wq.config.subjects).toEqual(['race.wq.jobs']);
      expect(wq.config.retention).toBe('workqueue');
      const consumer = await jsm.consumers.info('RACE_WQ_jobs', 'workers');
      expect(consumer.config.ack_policy).toBe('explicit');
      expect((await jsm.streams.info('RACE_LOG_flows')).config.subjects).toEqual(['race.flow.>']);
      expect((await jsm.streams.info('KV_RACE_flows')).config.name).toBe('KV_RACE_flows');
      expect((await jsm.streams.find('race.dead'))).toBe('RACE_DLQ_race_dead');
    } finally {
      await Promise.all([a.close(), b.close()]);
    }
  });

  it('reconnects after the server restarts: a consumer started before the outage takes a job enqueued after it, and KV data survived', async () => {
    const statuses: NatsBusStatus['type'][] = [];
    const bus = await connectNatsBus(options('restart', { onStatus: (s) => void statuses.push(s.type) }));
    try {
      const kv = await bus.keyValue('state');
      await kv.put('answer', '42');
      const queue = await bus.workQueue('jobs');
      const done: string[] = [];
      const consumer = await queue.consume(
        async (job) => {
          done.push(job.id);
          await job.ack();
        },
        { concurrency: 2 },
      );
      await queue.enqueue('before', 'x');
      await until(() => done.includes('before'));

      await server.stop();
      await until(() => statuses.includes('disconnect'), { what: 'the disconnect status' });
      await server.start();
      await until(() => statuses.includes('reconnect'), { timeoutMs: 10_000, what: 'the reconnect status' });

      // JetStream may need a moment after the restart before it takes messages.
      await until(
        () =>
          queue.enqueue('after', 'y').then(
            () => true,
            () => false,
          ),
        { timeoutMs: 10_000, intervalMs: 200, what: 'an enqueue after the restart' },
      );
      await until(() => done.includes('after'), { timeoutMs: 15_000, what: 'the job enqueued after the restart' });
      expect(done).toEqual(['before', 'after']);
      expect((await kv.get('answer'))?.string()).toBe('42');
      await consumer.stop();
    } finally {
      await bus.close();
    }
  });

  it('fails with CONNECTION naming the server when nothing listens there', async () => {
    const port = await freePort();
    const url = `nats://127.0.0.1:${port}`;
    const error = await connectNatsBus({ servers: [url], waitOnFirstConnect: false, maxReconnectAttempts: 0 }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(BusError);
    expect((error as BusError).code).toBe('CONNECTION');
    expect((error as BusError).message).toContain(`127.0.0.1:${port}`);
  });
});
