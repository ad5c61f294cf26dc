import { describe, expect, it } from 'vitest';
import { MicrotaskRunner } from '../src/actors/microtask.js';
import { ScriptedModel } from '../src/actors/model/ScriptedModel.js';
import { MemoryResultsStore } from '../src/actors/ResultsStore.js';
import { MemoryBus } from './support/MemoryBus.js';
import { startWorker } from '../src/worker.js';

const task = (key: string) =>
  JSON.stringify({ taskType: 'summarize', key, system: 's', prompt: 'p', deadlineAt: Date.now() + 60_000 });

describe('a worker shutting down', () => {
  it('after the grace period, stops its model calls and puts their tasks back on the queue (not stored as failed), and another worker finishes them', async () => {
    const bus = new MemoryBus();
    const queue = await bus.workQueue('tasks', { ackWaitMs: 60_000, maxDeliver: 5 });
    const results = new MemoryResultsStore();
    const slow = new ScriptedModel(() => ({ text: 'too late', delayMs: 30_000 }));
    const first = await startWorker({ queue, results, concurrency: 2, runner: new MicrotaskRunner({ model: slow, results }) });
    await queue.enqueue('a', task('flow-1/a'));
    while (slow.calls.length === 0) await new Promise((r) => setTimeout(r, 5));

    const stopping = first.stop();
    first.abortInFlight();
    const started = Date.now();
    await stopping;
    expect(Date.now() - started).toBeLessThan(5_000);
    expect(await results.get('flow-1/a')).toBeUndefined();

    const fast = new ScriptedModel(() => 'in time');
    const second = await startWorker({ queue, results, concurrency: 2, runner: new MicrotaskRunner({ model: fast, results }) });
    while (!(await results.get('flow-1/a'))) await new Promise((r) => setTimeout(r, 10));
    expect(await results.get('flow-1/a')).toMatchObject({ success: true, result: 'in time' });
    expect(fast.calls).toHaveLength(1);
    await second.stop();
    await bus.close();
  });
});
