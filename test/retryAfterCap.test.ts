import { describe, expect, it } from 'vitest';
import { createActor, toPromise } from 'xstate';
import { CircuitBreaker, MAX_RETRY_AFTER_MS } from '../src/actors/CircuitBreaker.js';
import { MicrotaskRunner } from '../src/actors/microtask.js';
import type { MicrotaskResult } from '../src/contracts/microtask.js';
import { AnthropicModel } from '../src/actors/model/AnthropicModel.js';
import { createRemoteMicrotaskLogic } from '../src/actors/remoteMicrotask.js';
import { KvResultsStore } from '../src/bus/KvResultsStore.js';
import { connectNatsBus } from '../src/bus/NatsBus.js';
import { subjects } from '../src/bus/subjects.js';
import { reply, startFakeAnthropic } from '../src/testing/fakeAnthropic.js';
import { startNatsServer } from '../src/testing/natsServer.js';
import { startWorker } from '../src/worker.js';

// Issue 11: a 429 with `retry-after: 3600` made the worker take the hour as is: past the
// task's deadline, so it stored the failure and dead-lettered the task at once (the flow fell
// back), though the server answered the next call. The queue caps the wait as the breaker does.
describe('a rate limit asking for an hour, on a worker (a real nats-server, the real SDK)', () => {
  it('the task is delivered again after the cap, not dead-lettered, and answered', async () => {
    await using nats = await startNatsServer();
    const calledAt: number[] = [];
    await using server = await startFakeAnthropic({
      replies: (request) => {
        calledAt.push(Date.now());
        return request.index === 0 ? reply.rateLimited(3600) : reply.text('answered');
      },
    });
    const daemonBus = await connectNatsBus({ servers: [nats.url] });
    const workerBus = await connectNatsBus({ servers: [nats.url] });
    const queueOptions = { ackWaitMs: 10_000, maxDeliver: 5, deadLetterSubject: 'microtask.tasks.dead' };
    const dead: string[] = [];
    await daemonBus.subscribe('microtask.tasks.dead', (m) => void dead.push(new TextDecoder().decode(m.data)));
    const results = new KvResultsStore(await workerBus.keyValue('results'));
    // As `microtask worker` builds it: no retries in the model port (the queue owns them), a 0.5 s breaker.
    const worker = await startWorker({
      queue: await workerBus.workQueue('tasks', queueOptions),
      runner: new MicrotaskRunner({
        model: new AnthropicModel({ apiKey: 'k', baseURL: server.url, model: 'm', maxRetries: 0 }),
        results,
        breaker: new CircuitBreaker(500),
      }),
      results,
      announce: (key, result) => workerBus.publish(subjects().taskResult(key), JSON.stringify(result)),
      concurrency: 2,
      heartbeatMs: 2_000,
    });
    try {
      const logic = createRemoteMicrotaskLogic({ bus: daemonBus, queue: await daemonBus.workQueue('tasks', queueOptions), results: await daemonBus.keyValue('results') });
      const input = { taskType: 'summarize', key: 'flow-429/a', system: 's', prompt: 'p', timeoutMs: 40_000 };
      const outcome: MicrotaskResult = await toPromise(createActor(logic, { input }).start());
      expect(outcome).toMatchObject({ success: true, result: 'answered' });
      expect(calledAt).toHaveLength(2);
      // Delivered again after the cap (NATS may add a little), not after the hour.
      const waited = calledAt[1]! - calledAt[0]!;
      expect(waited).toBeGreaterThanOrEqual(MAX_RETRY_AFTER_MS - 100);
      expect(waited).toBeLessThan(MAX_RETRY_AFTER_MS + 5_000);
      expect(dead).toEqual([]);
    } finally {
      await worker.stop();
      await workerBus.close();
      await daemonBus.close();
    }
  }, 60_000);

  it('the breaker takes the same cap by default', () => {
    let now = 0;
    const breaker = new CircuitBreaker({ now: () => now });
    breaker.record(Object.assign(new Error('429'), { kind: 'rate_limited', retryAfterMs: 3_600_000 }) as never);
    expect(breaker.check()?.retryAfterMs).toBe(MAX_RETRY_AFTER_MS);
    now = MAX_RETRY_AFTER_MS;
    expect(breaker.check()).toBeUndefined(); // half-open: this call is the probe
  });
});
