import { createActor, toPromise } from 'xstate';
import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { CircuitBreaker } from '../src/actors/CircuitBreaker.js';
import { createMicrotaskLogic, defaultFallback, MicrotaskRunner, type MicrotaskDeps } from '../src/actors/microtask.js';
import { AnthropicModel } from '../src/actors/model/AnthropicModel.js';
import { ModelError } from '../src/actors/model/ModelError.js';
import { ScriptedModel, type Script } from '../src/actors/model/ScriptedModel.js';
import { MemoryResultsStore } from '../src/actors/ResultsStore.js';
import { reply, startFakeAnthropic } from '../src/testing/fakeAnthropic.js';

const Verdict = z.object({ score: z.number().min(0).max(1), feedback: z.string() });

function runnerWith(script: Script, extra: Partial<MicrotaskDeps> = {}) {
  const model = new ScriptedModel(script);
  const results = new MemoryResultsStore();
  const runner = new MicrotaskRunner({
    model,
    results,
    answers: { verdict: Verdict },
    fallbacks: { summarize: (input) => ({ summary: String(input.data ?? '').slice(0, 20) }) },
    ...extra,
  });
  return { model, results, runner };
}

const task = { taskType: 'summarize', key: 'flow-1/summarize/0', system: 'Summarize.', prompt: 'Summarize the data.' };

describe('the microtask actor', () => {
  // The seed's test_microtask_timeout, with a measured duration instead of the timeout.
  it('times out after 1 s against a slower model: a timeout error and the fallback', async () => {
    const { runner } = runnerWith([{ text: 'too late', delayMs: 5_000 }]);
    const actor = createActor(createMicrotaskLogic(runner), {
      input: { ...task, data: 'A long text about microtasks and their timeouts', timeoutMs: 1_000 },
    });
    actor.start();
    const result = await toPromise(actor);
    expect(result.success).toBe(false);
    expect(result.error?.kind).toBe('timeout');
    expect(result.error?.message.toLowerCase()).toContain('timed out');
    expect(result.fallback).toEqual({ summary: 'A long text about mi' });
    expect(result.durationMs).toBeGreaterThanOrEqual(990);
    expect(result.durationMs).toBeLessThan(4_000);
  });

  it('cancels the real HTTP request on timeout: the server sees it closed', async () => {
    await using server = await startFakeAnthropic({ replies: [reply.text('slow', { delayMs: 5_000 })] });
    const runner = new MicrotaskRunner({
      model: new AnthropicModel({ apiKey: 'k', baseURL: server.url, model: 'm' }),
      results: new MemoryResultsStore(),
    });
    const result = await runner.run({ ...task, timeoutMs: 300 });
    expect(result.error?.kind).toBe('timeout');
    expect(result.fallback).toMatchObject({ fallback: true, taskType: 'summarize' });
    await server.waitForClosedEarly(1);
  });

  it('cancels the model call when the actor is stopped', async () => {
    await using server = await startFakeAnthropic({ replies: [reply.text('slow', { delayMs: 5_000 })] });
    const runner = new MicrotaskRunner({
      model: new AnthropicModel({ apiKey: 'k', baseURL: server.url, model: 'm' }),
      results: new MemoryResultsStore(),
    });
    const actor = createActor(createMicrotaskLogic(runner), { input: task }).start();
    while (server.requests.length === 0) await new Promise((r) => setTimeout(r, 10));
    actor.stop();
    await server.waitForClosedEarly(1);
  });

  it('uses the configured default timeout when the input gives none', async () => {
    const { runner } = runnerWith([{ text: 'late', delayMs: 3_000 }], { defaultTimeoutMs: 200 });
    const result = await runner.run(task);
    expect(result.error).toMatchObject({ kind: 'timeout', message: 'microtask summarize timed out after 200 ms' });
  });

  it('measures the duration of a call', async () => {
    const { runner } = runnerWith([{ text: 'short', delayMs: 200 }]);
    const result = await runner.run({ ...task, timeoutMs: 10_000 });
    expect(result).toMatchObject({ success: true, result: 'short', cached: false });
    expect(result.durationMs).toBeGreaterThanOrEqual(190);
    expect(result.durationMs).toBeLessThan(5_000);
    expect(result.usage.calls).toBe(1);
  });

  it('returns a result stored under its idempotency key without calling the model again', async () => {
    const { runner, model } = runnerWith(['first answer', 'second answer']);
    const first = await runner.run(task);
    const second = await runner.run(task);
    expect(model.calls).toHaveLength(1);
    expect(second).toMatchObject({ success: true, result: 'first answer', cached: true, durationMs: 0 });
    expect(first.cached).toBe(false);
    // The usage of the stored call is still reported: a flow counts it once, when it learns of it.
    expect(second.usage).toEqual(first.usage);
  });

  it('shares one model call between two runs of the same key at once', async () => {
    const { runner, model } = runnerWith([{ text: 'once', delayMs: 100 }, 'twice']);
    const [a, b] = await Promise.all([runner.run(task), runner.run(task)]);
    expect(model.calls).toHaveLength(1);
    expect(a.result).toBe('once');
    expect(b.result).toBe('once');
  });

  it('keeps a shared call running while one of its runs waits, and cancels it when none does', async () => {
    const { runner, model } = runnerWith([{ text: 'shared', delayMs: 150 }, { text: 'fresh', delayMs: 10 }]);
    const stopped = new AbortController();
    const first = runner.run(task, stopped.signal);
    const second = runner.run(task);
    stopped.abort();
    expect((await second).result).toBe('shared');
    expect((await first).result).toBe('shared');
    expect(model.calls).toHaveLength(1);

    // A run that starts after the only waiter of a call was cancelled gets its own call.
    const { runner: runner2, model: model2 } = runnerWith([{ text: 'abandoned', delayMs: 150 }, { text: 'fresh', delayMs: 10 }]);
    const lone = new AbortController();
    const abandoned = runner2.run({ ...task, key: 'k2' }, lone.signal);
    while (model2.calls.length === 0) await new Promise((r) => setTimeout(r, 2));
    lone.abort();
    const fresh = await runner2.run({ ...task, key: 'k2' });
    expect(fresh.result).toBe('fresh');
    expect((await abandoned).error?.kind).toBe('cancelled');
    expect(model2.calls).toHaveLength(2);
  });

  it('never calls the model for a run cancelled before its call began (a daemon stopping)', async () => {
    const { runner, model } = runnerWith([{ text: 'unused', delayMs: 10 }]);
    const stopped = new AbortController();
    const run = runner.run(task, stopped.signal);
    stopped.abort();
    expect((await run).error?.kind).toBe('cancelled');
    expect(model.calls).toHaveLength(0);
  });

  it('fails fast once the key was refused, and while the server is known to be down', async () => {
    const refused = runnerWith([new ModelError('auth', '401: invalid key'), 'never']);
    expect((await refused.runner.run(task)).error?.kind).toBe('auth');
    const second = await refused.runner.run({ ...task, key: 'other' });
    expect(second).toMatchObject({ error: { kind: 'auth', message: 'not tried: 401: invalid key' }, usage: { calls: 0 } });
    expect(refused.model.calls).toHaveLength(1);

    let now = 1_000;
    const down = runnerWith([new ModelError('unavailable', 'connection refused'), 'back'], { breaker: new CircuitBreaker(15_000, () => now) });
    expect((await down.runner.run(task)).error?.kind).toBe('unavailable');
    expect((await down.runner.run({ ...task, key: 'b' })).error?.message).toMatch(/^not tried: connection refused/);
    now += 15_000;
    expect(await down.runner.run({ ...task, key: 'c' })).toMatchObject({ success: true, result: 'back' });
    expect(down.model.calls).toHaveLength(2);
  });

  it('does not store a transient failure: the next run calls the model again', async () => {
    const { runner, model } = runnerWith([new ModelError('unavailable', '503'), 'recovered'], { breaker: new CircuitBreaker(0) });
    expect((await runner.run(task)).error?.kind).toBe('unavailable');
    expect(await runner.run(task)).toMatchObject({ success: true, result: 'recovered' });
    expect(model.calls).toHaveLength(2);
  });

  it('stores a failure the model answered (paid for), so a rerun of the key does not pay again', async () => {
    const { runner, model } = runnerWith([{ value: { score: 3 } }, { value: { score: 0.5, feedback: 'ok' } }]);
    const input = { ...task, taskType: 'verify', key: 'flow-1/verify/0', answer: 'verdict' };
    expect((await runner.run(input)).error?.kind).toBe('invalid_output');
    const again = await runner.run(input);
    expect(again).toMatchObject({ success: false, cached: true, error: { kind: 'invalid_output' } });
    expect(model.calls).toHaveLength(1);
  });

  it('validates a structured answer against its registered schema', async () => {
    const { runner } = runnerWith([{ value: { score: 0.75, feedback: 'good' } }]);
    const result = await runner.run({ ...task, taskType: 'verify', answer: 'verdict' });
    expect(result).toMatchObject({ success: true, result: { score: 0.75, feedback: 'good' }, stopReason: 'tool_use' });
  });

  it('refuses an unknown answer schema before any model call', async () => {
    const { runner, model } = runnerWith(['never']);
    const result = await runner.run({ ...task, answer: 'nope' });
    expect(result.error).toMatchObject({ kind: 'unknown_answer_schema', retryable: false });
    expect(result.error?.message).toContain('verdict');
    expect(model.calls).toHaveLength(0);
  });

  it('keeps a recorded deadline: one already past times out without a call', async () => {
    const { runner, model } = runnerWith(['never']);
    const result = await runner.run({ ...task, deadlineAt: Date.now() - 1 });
    expect(result.error?.kind).toBe('timeout');
    expect(model.calls).toHaveLength(0);
  });

  it('counts from the deadline, not from the start of this run', async () => {
    const { runner } = runnerWith([{ text: 'late', delayMs: 2_000 }]);
    const started = performance.now();
    const result = await runner.run({ ...task, timeoutMs: 60_000, deadlineAt: Date.now() + 300 });
    expect(result.error?.kind).toBe('timeout');
    expect(performance.now() - started).toBeLessThan(1_500);
  });

  it('answers bad input with invalid_request instead of throwing', async () => {
    const { runner, model } = runnerWith(['never']);
    const result = await runner.run({ ...task, timeoutMs: -5 });
    expect(result.error?.kind).toBe('invalid_request');
    expect(result.error?.message).toContain('timeoutMs');
    expect(model.calls).toHaveLength(0);
  });

  it('reports the usage of a paid failure', async () => {
    await using server = await startFakeAnthropic({
      replies: [reply.text('cut', { stopReason: 'max_tokens', usage: { input_tokens: 7, output_tokens: 5 } })],
    });
    const runner = new MicrotaskRunner({
      model: new AnthropicModel({ apiKey: 'k', baseURL: server.url, model: 'm' }),
      results: new MemoryResultsStore(),
    });
    const result = await runner.run(task);
    expect(result).toMatchObject({ success: false, error: { kind: 'max_tokens' }, usage: { inputTokens: 7, outputTokens: 5, calls: 1 } });
  });
});

describe('names that come with the input (a program may give plain objects)', () => {
  const failing = () => new ModelError('unavailable', 'overloaded');

  it('`__proto__` or `constructor` as the task type gets the default fallback, not whatever the object inherits', async () => {
    for (const taskType of ['__proto__', 'constructor', 'toString']) {
      const { runner } = runnerWith([failing()]);
      const result = await runner.run({ ...task, taskType, key: `flow-p/${taskType}/0` });
      expect(result.success, taskType).toBe(false);
      // The default fallback: null output, never the input echoed back nor a crash.
      expect(result.fallback, taskType).toEqual(defaultFallback({ ...task, taskType, key: `flow-p/${taskType}/0` }, result.error!));
    }
  });

  it('a fallback that throws gets the default one instead of failing the run', async () => {
    const { runner } = runnerWith([failing()], { fallbacks: { summarize: () => { throw new Error('the fallback broke'); } } });
    const result = await runner.run(task);
    expect(result.success).toBe(false);
    expect(result.error?.kind).toBe('unavailable');
    expect(result.fallback).toEqual(defaultFallback(task, result.error!));
  });

  it('`constructor` as the answer names no schema: unknown_answer_schema, and no model call', async () => {
    const { runner, model } = runnerWith([{ text: 'x' }]);
    const result = await runner.run({ ...task, answer: 'constructor' });
    expect(result.error?.kind).toBe('unknown_answer_schema');
    expect(model.calls).toHaveLength(0);
  });
});
