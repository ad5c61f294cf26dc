import { describe, expect, it } from 'vitest';
import { createActor, toPromise } from 'xstate';
import { CircuitBreaker } from '../src/actors/CircuitBreaker.js';
import { MicrotaskRunner } from '../src/actors/microtask.js';
import type { MicrotaskResult } from '../src/contracts/microtask.js';
import { AnthropicModel } from '../src/actors/model/AnthropicModel.js';
import { createRemoteMicrotaskLogic } from '../src/actors/remoteMicrotask.js';
import { KvResultsStore } from '../src/bus/KvResultsStore.js';
import { connectNatsBus } from '../src/bus/NatsBus.js';
import { subjects } from '../src/bus/subjects.js';
import { reply, startFakeAnthropic, type FakeRequest } from '../src/testing/fakeAnthropic.js';
import { startNatsServer } from '../src/testing/natsServer.js';
import { startWorker } from '../src/worker.js';

// Issue 12: the microtask actor subscribes, reads the results bucket and enqueues in one
// go (one round trip, not three). What the read decides must still hold when the job is
// already on its way: a stored answer is used, and a stored transient failure is retried.
const task = { taskType: 'summarize', system: 's', prompt: 'p' };

async function setup(replies: (request: FakeRequest) => ReturnType<typeof reply.text> | ReturnType<typeof reply.overloaded>) {
  const nats = await startNatsServer();
  const server = await startFakeAnthropic({ replies });
  const daemonBus = await connectNatsBus({ servers: [nats.url] });
  const workerBus = await connectNatsBus({ servers: [nats.url] });
  // One delivery: a transient failure is stored for its flow at once (its last chance).
  const queueOptions = { ackWaitMs: 10_000, maxDeliver: 1, deadLetterSubject: 'microtask.tasks.dead' };
  const results = new KvResultsStore(await workerBus.keyValue('results'));
  const worker = await startWorker({
    queue: await workerBus.workQueue('tasks', queueOptions),
    runner: new MicrotaskRunner({ model: new AnthropicModel({ apiKey: 'k', baseURL: server.url, model: 'm', maxRetries: 0 }), results, breaker: new CircuitBreaker(1) }),
    results,
    announce: (key, result) => workerBus.publish(subjects().taskResult(key), JSON.stringify(result)),
    concurrency: 4,
  });
  // A job dead-lettered is published on the queue's dead-letter subject: counted as it passes.
  let deadLetters = 0;
  await daemonBus.subscribe(queueOptions.deadLetterSubject, () => void deadLetters++);
  const logic = createRemoteMicrotaskLogic({ bus: daemonBus, queue: await daemonBus.workQueue('tasks', queueOptions), results: await daemonBus.keyValue('results') });
  const run = (key: string, input: Record<string, unknown> = {}): Promise<MicrotaskResult> =>
    toPromise(createActor(logic, { input: { ...task, key, timeoutMs: 5_000, ...input } as never }).start());
  return {
    server,
    results,
    run,
    deadLetters: () => deadLetters,
    async [Symbol.asyncDispose]() {
      await worker.stop();
      await workerBus.close();
      await daemonBus.close();
      await server.close();
      await nats.close();
    },
  };
}

describe('the remote microtask actor over NATS', () => {
  it('a run whose task failed transiently (stored, last delivery) is tried again as a new job within the duplicate window, and gets the answer', async () => {
    await using s = await setup((request) => (request.index === 0 ? reply.overloaded() : reply.text('answered')));
    const first = await s.run('flow-rt/a');
    // Past the breaker's cool-off (1 ms here): the retry reaches the model.
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect(first).toMatchObject({ success: false, error: { kind: 'unavailable', retryable: true } });
    // The flow resumed: the same key again, its first job still within the duplicate window.
    const second = await s.run('flow-rt/a');
    expect(second).toMatchObject({ success: true, result: 'answered', cached: false });
    expect(s.server.requests).toHaveLength(2);
  });

  it('a run whose answer is stored already returns it, and the job sent along with the read costs no model call', async () => {
    await using s = await setup(() => reply.text('answered'));
    const first = await s.run('flow-rt/b');
    expect(first).toMatchObject({ success: true, result: 'answered' });
    const again = await s.run('flow-rt/b');
    expect(again).toMatchObject({ success: true, result: 'answered', cached: true });
    // A new run of a key answered long ago (past the duplicate window) enqueues a job the read makes moot.
    await s.results.put('flow-rt/c', { ...first, key: 'flow-rt/c' });
    expect(await s.run('flow-rt/c')).toMatchObject({ success: true, result: 'answered', cached: true });
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(s.server.requests).toHaveLength(1);
  });

  it('a microtask whose input is invalid falls back at once, as embedded, and is never enqueued (no dead letter, no wait for its timeout)', async () => {
    await using s = await setup(() => reply.text('answered'));
    const started = performance.now();
    const result = await s.run('flow-rt/d', { prompt: '', maxTokens: -1 });
    expect(result).toMatchObject({ success: false, error: { kind: 'invalid_request', retryable: false }, fallback: expect.anything() });
    expect(result.error?.message).toMatch(/^invalid microtask input:/);
    // Its timeout is 5 s: the answer came from the check, not from the deadline.
    expect(performance.now() - started).toBeLessThan(2_500);
    expect(s.server.requests).toHaveLength(0);
    // Long enough for a worker to have taken and dead-lettered a job, had one been sent.
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(s.deadLetters()).toBe(0);
  });
});
