import { describe, expect, it } from 'vitest';
import { createActor, toPromise } from 'xstate';
import type { MicrotaskResult } from '../src/contracts/microtask.js';
import { createRemoteMicrotaskLogic } from '../src/actors/remoteMicrotask.js';
import { KvResultsStore } from '../src/bus/KvResultsStore.js';
import { connectNatsBus, type NatsBusStatus } from '../src/bus/NatsBus.js';
import { freePort, startNatsServer } from '../src/testing/natsServer.js';
import { storedResult } from './persistence/resultsFixtures.js';
import { startRelay } from './support/relay.js';

// Issue 15, item 2: flows waiting for a worker's answer over NATS cost the bus nothing while
// they wait (no poll of the results bucket per microtask), and an answer stored while the
// daemon's connection was down still reaches its flow once the connection is back, long
// before the task's deadline. A real nats-server (its monitoring endpoint counts what each
// connection sends), the daemon's microtask actors on their own connection.

const queueOptions = { ackWaitMs: 10_000, maxDeliver: 3, deadLetterSubject: 'microtask.tasks.dead' };
const task = { taskType: 'summarize', system: 's', prompt: 'p' };
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const until = async (condition: () => boolean | Promise<boolean>, what: string, timeoutMs = 20_000) => {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
};

/** What the server has received from the client connection named `name` (its monitoring endpoint). */
async function sentBy(monitorPort: number, name: string): Promise<{ msgs: number; bytes: number }> {
  const connz = (await (await fetch(`http://127.0.0.1:${monitorPort}/connz?limit=1024`)).json()) as {
    connections: { name?: string; in_msgs: number; in_bytes: number }[];
  };
  const connection = connz.connections.find((c) => c.name === name);
  if (!connection) throw new Error(`no connection named ${name} on the server`);
  return { msgs: connection.in_msgs, bytes: connection.in_bytes };
}


describe('waiting for workers over NATS (issue 15)', () => {
  it('N flows waiting on a worker that does not answer send nothing to the server while they wait (no poll)', async () => {
    const N = 40;
    const monitorPort = await freePort();
    await using nats = await startNatsServer({ args: ['-m', String(monitorPort)] });
    const daemonBus = await connectNatsBus({ servers: [nats.url], name: 'daemon' });
    const other = await connectNatsBus({ servers: [nats.url], name: 'observer' });
    try {
      const queue = await other.workQueue('tasks', queueOptions);
      // A short poll, were there one: before issue 15 a run read the bucket this often.
      const logic = createRemoteMicrotaskLogic({ bus: daemonBus, queue: await daemonBus.workQueue('tasks', queueOptions), results: await daemonBus.keyValue('results'), pollMs: 100 });
      const actors = Array.from({ length: N }, (_, i) => createActor(logic, { input: { ...task, key: `flow-idle-${i}/t`, timeoutMs: 600_000 } }).start());
      await until(async () => (await queue.depth()).waiting === N, `${N} tasks enqueued`);
      // Settled: the runs' set-up (watch, read, enqueue) is answered and done.
      await sleep(300);
      const before = await sentBy(monitorPort, 'daemon');
      await sleep(3_000);
      const after = await sentBy(monitorPort, 'daemon');
      expect(after.msgs - before.msgs).toBe(0);
      for (const actor of actors) actor.stop();
    } finally {
      await other.close();
      await daemonBus.close();
    }
  }, 60_000);

  it("the bucket's watch reports a gap after the connection is lost and back, and sees the writes made meanwhile", async () => {
    await using nats = await startNatsServer();
    const relay = await startRelay(nats.port);
    const statuses: NatsBusStatus['type'][] = [];
    const daemonBus = await connectNatsBus({ servers: [relay.url], reconnectTimeWaitMs: 100, onStatus: (s) => void statuses.push(s.type) });
    const writer = await connectNatsBus({ servers: [nats.url] });
    try {
      const kv = await writer.keyValue('results');
      let gaps = 0;
      const seen: string[] = [];
      const sub = await (await daemonBus.keyValue('results')).watchUpdates((key) => void seen.push(key), { onGap: () => void gaps++ });
      await kv.put('before', 'x');
      await until(() => seen.length === 1, 'the first write seen');
      relay.cut();
      await until(() => statuses.includes('disconnect'), 'the connection lost');
      await kv.put('meanwhile', 'y');
      relay.restore();
      await until(() => gaps === 1, 'a gap reported');
      await until(() => seen.includes('meanwhile'), 'the write made meanwhile seen');
      await sub.unsubscribe();
      expect(seen).toEqual(['before', 'meanwhile']);
    } finally {
      await writer.close();
      await daemonBus.close();
      await relay.close();
    }
  }, 60_000);

  it("an answer stored while the daemon's connection was down reaches its flow after the reconnect, long before the deadline", async () => {
    await using nats = await startNatsServer();
    const relay = await startRelay(nats.port);
    const statuses: NatsBusStatus['type'][] = [];
    const daemonBus = await connectNatsBus({ servers: [relay.url], name: 'daemon', reconnectTimeWaitMs: 100, onStatus: (s) => void statuses.push(s.type) });
    const workerBus = await connectNatsBus({ servers: [nats.url], name: 'worker' });
    try {
      const queue = await workerBus.workQueue('tasks', queueOptions);
      const results = new KvResultsStore(await workerBus.keyValue('results'));
      const logic = createRemoteMicrotaskLogic({ bus: daemonBus, queue: await daemonBus.workQueue('tasks', queueOptions), results: await daemonBus.keyValue('results') });
      // Two runs: one waits on the watch already open when the other joins.
      const keys = ['flow-gap-1/t', 'flow-gap-2/t'];
      const outcomes = keys.map((key) => toPromise(createActor(logic, { input: { ...task, key, timeoutMs: 600_000 } }).start()) as Promise<MicrotaskResult>);
      await until(async () => (await queue.depth()).waiting === keys.length, 'the tasks enqueued');

      relay.cut();
      await until(() => statuses.includes('disconnect'), "the daemon's connection lost");
      // The worker's answers land while the daemon cannot hear of them.
      for (const key of keys) await results.put(key, storedResult(key, { result: `answer of ${key}` }));
      await sleep(500);
      relay.restore();
      await until(() => statuses.includes('reconnect'), 'the daemon reconnected');

      // The deadline is ten minutes away: only the catch-up after the reconnect can answer within the test's time.
      const settled = await Promise.all(outcomes);
      expect(settled.map((r) => [r.success, r.result])).toEqual(keys.map((key) => [true, `answer of ${key}`]));
    } finally {
      await workerBus.close();
      await daemonBus.close();
      await relay.close();
    }
  }, 60_000);
});
