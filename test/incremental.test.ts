import { describe, expect, it } from 'vitest';
import { createActor, fromPromise, toPromise } from 'xstate';
import type { ModelRequest } from '../src/actors/model/ModelPort.js';
import { ModelError } from '../src/actors/model/ModelError.js';
import { incrementalMachine, type IncrementalInput, type IncrementalOutput } from '../src/machines/incremental.js';
import { roundTrip, runToEnd, scripted, stateCoverage } from './support/flows.js';

const coverage = stateCoverage(incrementalMachine);

const input: IncrementalInput = {
  key: 'inc',
  items: [1, 2, 3],
  task: { taskType: 'square', system: 'You do arithmetic.', prompt: 'Square the item.', data: { unit: 'none' } },
};

type ItemData = { item: number; index: number; context?: unknown };
const itemOf = (request: ModelRequest<unknown>) => (request.data as ItemData).item;

/** Squares each item; fails the items listed in `failing`, with a failure the runner stores. */
const squarer =
  (failing: readonly number[] = []) =>
  (request: ModelRequest<unknown>) =>
    failing.includes(itemOf(request)) ? new ModelError('invalid_output', `no square for ${itemOf(request)}`) : String(itemOf(request) ** 2);

const machineFor = (s: ReturnType<typeof scripted>) => incrementalMachine.provide({ actors: { microtask: s.microtask } });

describe('the incremental flow', () => {
  it('processes every item in order, one microtask each, with the task data as context', async () => {
    const s = scripted(squarer());
    const output: IncrementalOutput = await runToEnd(machineFor(s), input, coverage.inspect);
    expect(output).toMatchObject({ status: 'done', progress: { done: 3, failed: 0, skipped: 0, total: 3 }, usage: { calls: 3 } });
    expect(output.reason).toBeUndefined();
    expect(output.results).toEqual([
      { index: 0, status: 'done', result: '1', attempt: 1 },
      { index: 1, status: 'done', result: '4', attempt: 1 },
      { index: 2, status: 'done', result: '9', attempt: 1 },
    ]);
    expect(s.model.calls.map((c) => c.request.data)).toEqual([
      { context: { unit: 'none' }, item: 1, index: 0 },
      { context: { unit: 'none' }, item: 2, index: 1 },
      { context: { unit: 'none' }, item: 3, index: 2 },
    ]);
  });

  it('first run fails on item 2: failed === 1; the rerun skips the done items and retries item 2 under a new key', async () => {
    // One runner and results store for both runs, as in the daemon: the first run's
    // failure is stored under its key, so only a new key can reach the model again.
    let failItem2 = true;
    const s = scripted((request) => {
      if (itemOf(request) === 2 && failItem2) {
        failItem2 = false;
        return new ModelError('invalid_output', 'the answer did not fit');
      }
      return String(itemOf(request) ** 2);
    });
    const machine = machineFor(s);

    const first: IncrementalOutput = await runToEnd(machine, input, coverage.inspect);
    expect(first.status).toBe('failed');
    expect(first.progress).toEqual({ done: 2, failed: 1, skipped: 0, total: 3 });
    expect(first.results[1]).toMatchObject({ index: 1, status: 'failed', attempt: 1, error: expect.stringMatching(/invalid_output/) });
    expect(first.reason).toMatch(/1 of 3 items failed.*rerun/);
    expect(await s.results.get('inc/item/1/1')).toMatchObject({ success: false });

    const callsBefore = s.model.calls.length;
    const second: IncrementalOutput = await runToEnd(
      machine,
      { ...input, previous: JSON.parse(JSON.stringify({ results: first.results })) },
      coverage.inspect,
    );
    const secondCalls = s.model.calls.slice(callsBefore);
    expect(secondCalls.map((c) => itemOf(c.request as ModelRequest<unknown>))).toEqual([2]);
    expect(second.progress.skipped).toBeGreaterThanOrEqual(1);
    expect(second).toMatchObject({ status: 'done', progress: { done: 1, failed: 0, skipped: 2, total: 3 }, usage: { calls: 1 } });
    expect(second.results).toEqual([
      { index: 0, status: 'done', result: '1', attempt: 1, fromPrevious: true },
      { index: 1, status: 'done', result: '4', attempt: 2 },
      { index: 2, status: 'done', result: '9', attempt: 1, fromPrevious: true },
    ]);
    expect(await s.results.get('inc/item/1/2')).toMatchObject({ success: true, result: '4' });
  });

  it('records a microtask actor that throws as a failed item and goes on with the next', async () => {
    const s = scripted(squarer());
    const throwing = fromPromise<Awaited<ReturnType<typeof s.runner.run>>, Parameters<typeof s.runner.run>[0]>(
      async ({ input: task, signal }) => {
        if (task.key === 'inc/item/0/1') throw new Error('transport down');
        return s.runner.run(task, signal);
      },
    );
    const output: IncrementalOutput = await runToEnd(
      incrementalMachine.provide({ actors: { microtask: throwing } }),
      input,
      coverage.inspect,
    );
    expect(output.status).toBe('failed');
    expect(output.results[0]).toEqual({ index: 0, status: 'failed', error: 'unknown: transport down', attempt: 1 });
    expect(output.results.slice(1).map((r) => r.status)).toEqual(['done', 'done']);
  });

  it('keeps progress current and checkpoints each item before the next starts', async () => {
    const seen: { progress: unknown; persisted: string }[] = [];
    let actor: ReturnType<typeof createActor<typeof incrementalMachine>> | undefined;
    const s = scripted((request) => {
      // While item i is asked for, items before it must already be in the snapshot.
      seen.push({
        progress: actor!.getSnapshot().context.progress,
        persisted: JSON.stringify(actor!.getPersistedSnapshot()),
      });
      return itemOf(request) === 2 ? new ModelError('invalid_output', 'no') : String(itemOf(request) ** 2);
    });
    actor = createActor(machineFor(s), { input, inspect: coverage.inspect });
    actor.start();
    const output: IncrementalOutput = await toPromise(actor);

    expect(seen.map((x) => x.progress)).toEqual([
      { done: 0, failed: 0, skipped: 0, total: 3 },
      { done: 1, failed: 0, skipped: 0, total: 3 },
      { done: 1, failed: 1, skipped: 0, total: 3 },
    ]);
    const checkpoint = JSON.parse(seen[2]!.persisted);
    expect(checkpoint.context.results.slice(0, 2)).toEqual(output.results.slice(0, 2));
    expect(checkpoint.context.results[2]).toMatchObject({ status: 'pending' });
    expect(output.progress).toEqual({ done: 2, failed: 1, skipped: 0, total: 3 });
  });

  it('stops before an item the budget does not allow, leaving the rest pending, and a rerun goes on', async () => {
    const s = scripted(squarer());
    const machine = machineFor(s);
    const stopped: IncrementalOutput = await runToEnd(machine, { ...input, budget: { maxCalls: 2 } }, coverage.inspect);
    expect(stopped).toMatchObject({ status: 'budget_exceeded', usage: { calls: 2 }, progress: { done: 2, failed: 0, skipped: 0, total: 3 } });
    expect(stopped.results[2]).toEqual({ index: 2, status: 'pending', attempt: 1 });
    expect(stopped.reason).toMatch(/2 model calls.*1 of 3 items left pending/);
    expect(s.model.calls).toHaveLength(2);

    const resumed: IncrementalOutput = await runToEnd(machine, { ...input, previous: { results: stopped.results } }, coverage.inspect);
    expect(resumed).toMatchObject({ status: 'done', usage: { calls: 1 }, progress: { done: 1, skipped: 2, total: 3 } });
    expect(resumed.results[2]).toEqual({ index: 2, status: 'done', result: '9', attempt: 1 });

    const tokens: IncrementalOutput = await runToEnd(machine, { ...input, key: 'tok', budget: { maxTokens: 1 } }, coverage.inspect);
    expect(tokens).toMatchObject({ status: 'budget_exceeded', usage: { calls: 1 }, progress: { done: 1 } });
    expect(tokens.reason).toContain('1 tokens');
  });

  it('is done at once with an empty item list', async () => {
    const s = scripted(squarer());
    const output: IncrementalOutput = await runToEnd(machineFor(s), { ...input, items: [] }, coverage.inspect);
    expect(output).toEqual({
      status: 'done',
      usage: { inputTokens: 0, outputTokens: 0, cacheCreationInputTokens: 0, cacheReadInputTokens: 0, calls: 0 },
      results: [],
      progress: { done: 0, failed: 0, skipped: 0, total: 0 },
    });
    expect(s.model.calls).toHaveLength(0);
  });

  it('survives a JSON round trip of its snapshot mid-flow and finishes with the same output', async () => {
    const uninterrupted = await runToEnd(machineFor(scripted(squarer([3]))), input, coverage.inspect);
    const s = scripted(squarer([3]));
    const { output, persisted } = await roundTrip(
      machineFor(s),
      input,
      (snapshot) => snapshot.matches('processing') && snapshot.context.current === 1,
      coverage.inspect,
    );
    expect((persisted as { context: { results: unknown[] } }).context.results[0]).toEqual({ index: 0, status: 'done', result: '1', attempt: 1 });
    expect(output).toEqual(uninterrupted);
    expect(output.status).toBe('failed');
    // Item 1 (index 0) was checkpointed before the pause: the restored flow never asks for it again.
    expect(s.model.calls.filter((c) => itemOf(c.request as ModelRequest<unknown>) === 1)).toHaveLength(1);
  });
});
