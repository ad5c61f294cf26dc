import { describe, expect, it } from 'vitest';
import { createActor, toPromise } from 'xstate';
import { createMicrotaskLogic, MicrotaskRunner } from '../src/actors/microtask.js';
import { MAX_MICROTASK_TIMEOUT_MS, type MicrotaskResult } from '../src/contracts/microtask.js';
import { AnthropicModel } from '../src/actors/model/AnthropicModel.js';
import { ScriptedModel } from '../src/actors/model/ScriptedModel.js';
import { MemoryResultsStore } from '../src/actors/ResultsStore.js';
import { createRemoteMicrotaskLogic } from '../src/actors/remoteMicrotask.js';
import { KvResultsStore } from '../src/bus/KvResultsStore.js';
import { connectNatsBus } from '../src/bus/NatsBus.js';
import { subjects } from '../src/bus/subjects.js';
import { reply, startFakeAnthropic } from '../src/testing/fakeAnthropic.js';
import { startNatsServer } from '../src/testing/natsServer.js';
import { startWorker } from '../src/worker.js';

// Issue 11: a deadlineAt far in the future (2^40 ms ahead: a client's, a clock gone wrong)
// made the microtask's timer overflow: Node clamps a delay above 2^31-1 ms to 1 ms, so the
// call was aborted as timed out at once. A deadline is kept, but never further than the
// longest timeout a microtask may have.
const task = { taskType: 'summarize', system: 's', prompt: 'p' };
const farAway = () => Date.now() + 2 ** 40;

describe('a deadline far in the future', () => {
  it('the runner makes its call and answers, instead of timing out at once', async () => {
    const model = new ScriptedModel([{ text: 'answered', delayMs: 50 }]);
    const runner = new MicrotaskRunner({ model, results: new MemoryResultsStore() });
    const result = await runner.run({ ...task, key: 'flow-far/a', deadlineAt: farAway() });
    expect(result).toMatchObject({ success: true, result: 'answered' });
    expect(model.calls).toHaveLength(1);
  });

  it('a microtask actor keeps a deadline no further than the longest timeout', async () => {
    const model = new ScriptedModel(['answered']);
    const actor = createActor(createMicrotaskLogic(new MicrotaskRunner({ model, results: new MemoryResultsStore() })), {
      input: { ...task, key: 'flow-far/b', deadlineAt: farAway() },
    });
    const before = Date.now();
    actor.start();
    // The input kept in the snapshot (and sent to a worker) carries the bounded deadline.
    const deadlineAt = (actor.getPersistedSnapshot() as { input?: { deadlineAt?: number } }).input?.deadlineAt ?? 0;
    expect(deadlineAt).toBeGreaterThanOrEqual(before + MAX_MICROTASK_TIMEOUT_MS);
    expect(deadlineAt).toBeLessThanOrEqual(Date.now() + MAX_MICROTASK_TIMEOUT_MS);
    expect(await toPromise(actor)).toMatchObject({ success: true, result: 'answered' });
  });

  it('over NATS: the daemon side enqueues the task, a worker answers it (a real nats-server, the real SDK)', async () => {
    await using nats = await startNatsServer();
    await using server = await startFakeAnthropic({ replies: () => reply.text('answered', { delayMs: 50 }) });
    const daemonBus = await connectNatsBus({ servers: [nats.url] });
    const workerBus = await connectNatsBus({ servers: [nats.url] });
    const queueOptions = { ackWaitMs: 10_000, maxDeliver: 3, deadLetterSubject: 'microtask.tasks.dead' };
    const results = new KvResultsStore(await workerBus.keyValue('results'));
    const worker = await startWorker({
      queue: await workerBus.workQueue('tasks', queueOptions),
      runner: new MicrotaskRunner({ model: new AnthropicModel({ apiKey: 'k', baseURL: server.url, model: 'm', maxRetries: 0 }), results }),
      results,
      announce: (key, result) => workerBus.publish(subjects().taskResult(key), JSON.stringify(result)),
      concurrency: 2,
    });
    try {
      const logic = createRemoteMicrotaskLogic({ bus: daemonBus, queue: await daemonBus.workQueue('tasks', queueOptions), results: await daemonBus.keyValue('results') });
      const outcome: MicrotaskResult = await toPromise(createActor(logic, { input: { ...task, key: 'flow-far/c', deadlineAt: farAway() } }).start());
      expect(outcome).toMatchObject({ success: true, result: 'answered' });
      expect(server.requests).toHaveLength(1);
    } finally {
      await worker.stop();
      await workerBus.close();
      await daemonBus.close();
    }
  });
});
