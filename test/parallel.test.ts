import { describe, expect, it } from 'vitest';
import { fromPromise } from 'xstate';
import type { ModelRequest } from '../src/actors/model/ModelPort.js';
import { ModelError } from '../src/actors/model/ModelError.js';
import type { MicrotaskInput, MicrotaskResult } from '../src/contracts/microtask.js';
import type { TaskSpec } from '../src/machines/common.js';
import { parallelMachine, type ParallelInput, type ParallelOutput } from '../src/machines/parallel.js';
import { addUsage, zeroUsage } from '../src/contracts/usage.js';
import { roundTrip, runToEnd, scripted, stateCoverage } from './support/flows.js';

const coverage = stateCoverage(parallelMachine);

const task = (n: number): TaskSpec => ({ taskType: 'analyze', system: 'You analyze modules.', prompt: `Analyze module ${n}.`, data: { n } });
const inputOf = (n: number, concurrency: number, overrides: Partial<ParallelInput> = {}): ParallelInput => ({
  key: 'par',
  tasks: Array.from({ length: n }, (_, i) => task(i)),
  concurrency,
  ...overrides,
});

const nOf = (request: ModelRequest<unknown>) => (request.data as { n: number }).n;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Answers "module n analyzed" after `delays[n]` ms, and measures how many calls are
 * in flight at once and in which order they end.
 */
function analyst(delays: readonly number[], fail: (n: number) => ModelError | undefined = () => undefined) {
  const stats = { inFlight: 0, maxInFlight: 0, finished: [] as number[] };
  const script = async (request: ModelRequest<unknown>) => {
    const n = nOf(request);
    stats.inFlight++;
    stats.maxInFlight = Math.max(stats.maxInFlight, stats.inFlight);
    try {
      await sleep(delays[n] ?? 1);
    } finally {
      stats.inFlight--;
      stats.finished.push(n);
    }
    return fail(n) ?? { text: `module ${n} analyzed`, usage: { inputTokens: 10 + n, outputTokens: 5 } };
  };
  return { stats, script };
}

const run = (script: Parameters<typeof scripted>[0], input: ParallelInput) => {
  const s = scripted(script);
  const machine = parallelMachine.provide({ actors: { microtask: s.microtask } });
  return { ...s, machine, output: runToEnd(machine, input, coverage.inspect) as Promise<ParallelOutput> };
};

/** What two runs of the same flow share: all but measured durations and request ids. */
const comparable = (output: ParallelOutput) => ({
  ...output,
  results: output.results.map((r) => {
    if (!r) return r;
    const { durationMs: _duration, requestId: _requestId, ...rest } = r;
    return rest;
  }),
});

describe('the parallel flow', () => {
  it('gives results in input order although they finish in another order', async () => {
    const { stats, script } = analyst([40, 5, 25, 1]);
    const output = await run(script, inputOf(4, 4)).output;
    expect(stats.finished).not.toEqual([0, 1, 2, 3]);
    expect(output).toMatchObject({ status: 'done', succeeded: 4, failed: 0 });
    expect(output.reason).toBeUndefined();
    expect(output.results.map((r) => r?.result)).toEqual([0, 1, 2, 3].map((n) => `module ${n} analyzed`));
    expect(output.results.map((r) => r?.key)).toEqual(['par/task/0', 'par/task/1', 'par/task/2', 'par/task/3']);
  });

  it('has at most K in flight, and really K together, starting the next as each finishes', async () => {
    const { stats, script } = analyst([30, 10, 20, 5, 15, 5, 10]);
    const { output, model } = run(script, inputOf(7, 3));
    expect((await output).succeeded).toBe(7);
    expect(stats.maxInFlight).toBe(3);
    expect(model.calls).toHaveLength(7);

    const one = analyst([5, 5, 5]);
    await run(one.script, inputOf(3, 1)).output;
    expect(one.stats.maxInFlight).toBe(1);
    expect(one.stats.finished).toEqual([0, 1, 2]);
  });

  it('does not let one failed task or one throwing actor sink the others', async () => {
    const { script } = analyst([5, 5, 5, 5], (n) => (n === 1 ? new ModelError('unavailable', 'overloaded') : undefined));
    const s = scripted(script);
    // A microtask actor throws only when it cannot run at all (say the bus is down).
    const microtask = fromPromise<MicrotaskResult, MicrotaskInput>(async ({ input, signal }) => {
      if (input.key === 'par/task/2') throw new Error('transport down');
      return s.runner.run(input, signal);
    });
    const machine = parallelMachine.provide({ actors: { microtask } });
    const output: ParallelOutput = await runToEnd(machine, inputOf(4, 2), coverage.inspect);
    expect(output).toMatchObject({ status: 'done', succeeded: 2, failed: 2, reason: '2 of 4 tasks failed' });
    expect(output.results[0]).toMatchObject({ success: true, result: 'module 0 analyzed' });
    expect(output.results[1]).toMatchObject({ success: false, error: { kind: 'unavailable', message: 'overloaded' } });
    expect(output.results[2]).toMatchObject({
      success: false,
      key: 'par/task/2',
      taskType: 'analyze',
      error: { kind: 'unknown', message: 'transport down' },
    });
    expect(output.results[3]).toMatchObject({ success: true, result: 'module 3 analyzed' });
  });

  it('fails when every task failed, and says why', async () => {
    // Not a refused key: that stops the flow at once (a FlowStopError, test/permanentCauses.test.ts).
    const output = await run(() => new ModelError('invalid_request', 'prompt is too long'), inputOf(3, 2)).output;
    expect(output).toMatchObject({ status: 'failed', succeeded: 0, failed: 3 });
    expect(output.reason).toMatch(/all 3 tasks failed.*invalid_request: prompt is too long/);
  });

  it('stops starting tasks when the budget would be exceeded, counting calls in flight, and waits for those', async () => {
    const { stats, script } = analyst([10, 20, 10, 10, 10]);
    const { output, model } = run(script, inputOf(5, 2, { budget: { maxCalls: 3 } }));
    const result = await output;
    expect(result).toMatchObject({ status: 'budget_exceeded', succeeded: 3, failed: 0, usage: { calls: 3 } });
    expect(result.results.map((r) => r === null)).toEqual([false, false, false, true, true]);
    expect(result.reason).toMatch(/3 model calls.*2 of 5 tasks not started/);
    expect(model.calls).toHaveLength(3);
    expect(stats.inFlight).toBe(0);

    const tokens = await run(analyst([5, 5, 5]).script, inputOf(3, 1, { budget: { maxTokens: 1 } })).output;
    expect(tokens).toMatchObject({ status: 'budget_exceeded', succeeded: 1, usage: { calls: 1 } });
    expect(tokens.results[1]).toBeNull();
  });

  it('sums the usage of every task', async () => {
    const output = await run(analyst([5, 1, 3]).script, inputOf(3, 2)).output;
    expect(output.usage).toEqual({ inputTokens: 10 + 11 + 12, outputTokens: 15, cacheCreationInputTokens: 0, cacheReadInputTokens: 0, calls: 3 });
    expect(output.results.reduce((sum, r) => addUsage(sum, r!.usage), zeroUsage())).toEqual(output.usage);
  });

  it('is done at once with no tasks', async () => {
    const { output, model } = run(analyst([]).script, inputOf(0, 2));
    expect(await output).toEqual({ status: 'done', usage: zeroUsage(), results: [], succeeded: 0, failed: 0 });
    expect(model.calls).toHaveLength(0);
  });

  it('survives a JSON round trip of its snapshot with tasks in flight and finishes with the same output', async () => {
    const delays = [5, 40, 40, 5, 5];
    const uninterrupted = await run(analyst(delays).script, inputOf(5, 2)).output;

    const { script } = analyst(delays);
    const s = scripted(script);
    const machine = parallelMachine.provide({ actors: { microtask: s.microtask } });
    const { output, persisted } = await roundTrip(
      machine,
      inputOf(5, 2),
      (snapshot) => snapshot.context.inFlight.length === 2 && snapshot.context.results[0] !== null,
      coverage.inspect,
    );
    const saved = persisted as { context: { inFlight: number[] }; children: Record<string, { src: string; snapshot: { status: string } }> };
    // Task 0 is done and gone from the children; the two in flight are there by name.
    expect(saved.context.inFlight).toEqual([1, 2]);
    expect(Object.keys(saved.children).sort()).toEqual(['task-1', 'task-2']);
    expect(Object.values(saved.children).map((c) => [c.src, c.snapshot.status])).toEqual([
      ['microtask', 'active'],
      ['microtask', 'active'],
    ]);

    expect(comparable(output)).toEqual(comparable(uninterrupted));
    expect(output.status).toBe('done');
    // Task 0 finished before the snapshot: the restored flow did not run it again.
    expect(s.model.calls.filter((c) => c.request.data && (c.request.data as { n: number }).n === 0)).toHaveLength(1);
  });
});
