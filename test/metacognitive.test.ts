import { describe, expect, it } from 'vitest';
import { fromPromise } from 'xstate';
import type { MicrotaskInput, MicrotaskResult } from '../src/contracts/microtask.js';
import { ModelError } from '../src/actors/model/ModelError.js';
import type { ModelRequest } from '../src/actors/model/ModelPort.js';
import type { Script } from '../src/actors/model/ScriptedModel.js';
import type { FailureAnalysis } from '../src/contracts/answers.js';
import { zeroUsage } from '../src/contracts/usage.js';
import type { CheckInput, CheckResult } from '../src/machines/common.js';
import { ADJUSTMENTS_HEADING, metacognitiveMachine, type MetacognitiveInput } from '../src/machines/metacognitive.js';
import { patternInputSchemas } from '../src/patterns/index.js';
import { roundTrip, runToEnd, scripted, stateCoverage } from './support/flows.js';

const coverage = stateCoverage(metacognitiveMachine);

const input: MetacognitiveInput = {
  key: 'mc',
  task: { taskType: 'summarize', system: 'You summarize release notes.', prompt: 'Summarize these notes.', timeoutMs: 100 },
  maxAttempts: 3,
};

const analysis = (fields: Partial<FailureAnalysis> & { adjustments?: Partial<FailureAnalysis['adjustments']> }) => ({
  value: {
    rootCause: 'the answer took too long',
    retry: true,
    reason: 'a longer timeout and a shorter answer will do',
    ...fields,
    adjustments: { promptAdditions: [], ...fields.adjustments },
  },
});

/** The scripted model behind the real runner, with every microtask input the machine asked for recorded. */
function recorded(script: Script) {
  const s = scripted(script);
  const inputs: MicrotaskInput[] = [];
  const microtask = fromPromise<MicrotaskResult, MicrotaskInput>(({ input, signal }) => {
    inputs.push(input);
    return s.runner.run(input, signal);
  });
  return { ...s, inputs, microtask };
}

const run = (script: Script, overrides: Partial<MetacognitiveInput> = {}, check?: (i: CheckInput) => Promise<CheckResult>) => {
  const s = recorded(script);
  const machine = metacognitiveMachine.provide({
    actors: { microtask: s.microtask, ...(check ? { check: fromPromise<CheckResult, CheckInput>(({ input }) => check(input)) } : {}) },
  });
  return { ...s, machine, output: runToEnd(machine, { ...input, ...overrides }, coverage.inspect) };
};

const isAnalysis = (request: ModelRequest<unknown>) => request.schemaName === 'failureAnalysis';

/**
 * Answers by what the request carries, never by call order (so a restored run gets the
 * same answers): too slow without a longer timeout; a wrong format until the system
 * prompt says "one sentence"; then the summary.
 */
const learner: Script = (request) => {
  if (isAnalysis(request)) {
    const failed = (request.data as { failed: { attempt: number } }).failed.attempt;
    return failed === 0
      ? analysis({ adjustments: { promptAdditions: ['Keep it short.'], timeoutMs: 2_000, model: 'claude-larger' } })
      : analysis({ rootCause: 'too long', adjustments: { promptAdditions: ['Answer in one sentence.'], timeoutMs: 3_000 } });
  }
  if (request.system.includes('one sentence')) return 'One sentence.';
  if (request.model === 'claude-larger') return new ModelError('max_tokens', 'the answer was cut off');
  return { text: 'too late', delayMs: 1_000 };
};

describe('the metacognitive flow', () => {
  it('is done at once when the first attempt succeeds', async () => {
    const { output, model } = run(['the summary']);
    const result = await output;
    expect(result).toMatchObject({ status: 'done', result: 'the summary', usage: { calls: 1 } });
    expect(result.attempts).toHaveLength(1);
    expect(result.attempts[0]).toMatchObject({ attempt: 0, key: 'mc/run/0', envelope: { success: true }, checkOk: null });
    expect(model.calls).toHaveLength(1);
  });

  it('analyzes a failure and really applies the adjustments to the next attempts, cumulatively', async () => {
    const { output, model, inputs } = run(learner);
    const result = await output;
    expect(result).toMatchObject({ status: 'done', result: 'One sentence.', usage: { calls: 5 } });
    expect(inputs.map((i) => i.key)).toEqual(['mc/run/0', 'mc/analyze/0', 'mc/run/1', 'mc/analyze/1', 'mc/run/2']);

    const [first, , second, , third] = inputs;
    expect(first!.system).toBe('You summarize release notes.');
    expect(first!.timeoutMs).toBe(100);
    expect(model.calls[0]!.request.model).toBeUndefined();

    expect(second!.system).toBe(`You summarize release notes.\n\n${ADJUSTMENTS_HEADING}\n- Keep it short.`);
    expect(second!.timeoutMs).toBe(2_000);
    expect(model.calls[2]!.request.model).toBe('claude-larger');

    // The second analysis adds an instruction and a timeout; the first one's addition and model stay.
    expect(third!.system).toContain('- Keep it short.\n- Answer in one sentence.');
    expect(third!.timeoutMs).toBe(3_000);
    expect(model.calls[4]!.request.model).toBe('claude-larger');

    expect(result.attempts.map((a: { adjustments: unknown }) => a.adjustments)).toEqual([
      { promptAdditions: [] },
      { promptAdditions: ['Keep it short.'], timeoutMs: 2_000, model: 'claude-larger' },
      { promptAdditions: ['Keep it short.', 'Answer in one sentence.'], timeoutMs: 3_000, model: 'claude-larger' },
    ]);
    expect(result.attempts[0]).toMatchObject({ envelope: { success: false, error: { kind: 'timeout' } }, analysis: { retry: true } });
    expect(result.attempts[1]).toMatchObject({ envelope: { success: false, error: { kind: 'max_tokens' } }, analysis: { rootCause: 'too long' } });
  });

  it('gives the analysis the task, the error and every attempt so far', async () => {
    const { output, model } = run(learner);
    await output;
    const data = model.calls[3]!.request.data as any;
    expect(model.calls[3]!.request.schemaName).toBe('failureAnalysis');
    expect(data.task).toMatchObject({ prompt: 'Summarize these notes.', timeoutMs: 2_000, model: 'claude-larger' });
    expect(data.failed).toMatchObject({ attempt: 1, error: { kind: 'max_tokens', message: 'the answer was cut off' } });
    expect(data.failed.failure).toContain('the answer was cut off');
    expect(data.attemptsSoFar).toHaveLength(2);
    expect(data.attemptsSoFar[0]).toMatchObject({ error: { kind: 'timeout' }, analysis: { rootCause: 'the answer took too long' } });
    expect(data.attemptsLeft).toBe(1);
  });

  it('stops with the reason of an analysis that says stop, returning the fallback', async () => {
    const answers = [new ModelError('refused', 'will not summarize this'), analysis({ retry: false, reason: 'the notes are not release notes' })];
    const result = await run(answers).output;
    expect(result).toMatchObject({ status: 'failed', reason: 'the notes are not release notes', result: { fallback: true }, usage: { calls: 2 } });
    expect(result.attempts).toHaveLength(1);
    expect(result.attempts[0].analysis).toMatchObject({ retry: false });
  });

  it('retries plainly when the analysis itself fails and attempts remain (the seed\'s behaviour, the default)', async () => {
    const answers = [new ModelError('unavailable', 'overloaded'), new ModelError('unavailable', 'still overloaded'), 'the summary'];
    const { output, inputs } = run(answers);
    const result = await output;
    expect(result).toMatchObject({ status: 'done', result: 'the summary', usage: { calls: 3 } });
    expect(inputs.map((i) => i.key)).toEqual(['mc/run/0', 'mc/analyze/0', 'mc/run/1']);
    // Nothing was learned, so nothing changes: the same system prompt, timeout and model.
    const [first, , second] = inputs;
    expect({ ...second, key: first!.key }).toEqual(first);
    expect(result.attempts[0]).toMatchObject({ analysisError: 'unavailable: still overloaded' });
    expect(result.attempts[1]).toMatchObject({ attempt: 1, adjustments: { promptAdditions: [] }, envelope: { success: true } });
  });

  it('keeps the lessons already learned when a later analysis fails, adding none', async () => {
    // Attempt 0 fails and its analysis adds an instruction; attempt 1 fails too and its
    // analysis fails; attempt 2 runs with attempt 1's adjustments and succeeds.
    const answers = [
      new ModelError('unavailable', 'down'),
      analysis({ adjustments: { promptAdditions: ['Keep it short.'] } }),
      new ModelError('rate_limited', 'slow down'),
      new ModelError('invalid_output', 'not JSON'),
      'short',
    ];
    const { output, inputs } = run(answers);
    const result = await output;
    expect(inputs.map((i) => i.key)).toEqual(['mc/run/0', 'mc/analyze/0', 'mc/run/1', 'mc/analyze/1', 'mc/run/2']);
    expect(inputs[4]!.system).toBe(inputs[2]!.system);
    expect(inputs[4]!.system).toContain('- Keep it short.');
    expect(result).toMatchObject({ status: 'done', result: 'short', usage: { calls: 5 } });
    expect(result.attempts[1]).toMatchObject({ analysisError: 'invalid_output: not JSON' });
    expect(result.attempts[2]!.adjustments).toEqual(result.attempts[1]!.adjustments);
  });

  it('is exhausted, not failed, when every analysis fails until no attempt is left', async () => {
    const script: Script = (request) => (isAnalysis(request) ? new ModelError('unavailable', 'analyst down') : new ModelError('unavailable', 'down'));
    const { output, inputs } = run(script, { maxAttempts: 2 });
    const result = await output;
    expect(result).toMatchObject({ status: 'exhausted', result: { fallback: true }, usage: { calls: 3 } });
    expect(result.reason).toBe('no attempt succeeded in 2 attempts; in the last one the microtask failed (unavailable: down)');
    expect(inputs.map((i) => i.key)).toEqual(['mc/run/0', 'mc/analyze/0', 'mc/run/1']);
  });

  it("stops when the analysis itself fails with onAnalysisFailure: 'fail', saying why", async () => {
    const answers = [new ModelError('unavailable', 'overloaded'), new ModelError('unavailable', 'still overloaded')];
    const result = await run(answers, { onAnalysisFailure: 'fail' }).output;
    expect(result.status).toBe('failed');
    expect(result.reason).toMatch(/the failure analysis failed \(unavailable: still overloaded\) after the microtask failed \(unavailable: overloaded\)/);
    expect(result.attempts[0]).toMatchObject({ analysisError: 'unavailable: still overloaded' });
    expect(result.attempts[0].analysis).toBeUndefined();
  });

  it('takes onAnalysisFailure from a client as retry or fail, and refuses anything else at the edge', () => {
    const flowInput = { task: input.task, maxAttempts: 2 };
    expect(patternInputSchemas.metacognitive.parse({ ...flowInput, onAnalysisFailure: 'fail' })).toMatchObject({ onAnalysisFailure: 'fail' });
    expect(patternInputSchemas.metacognitive.parse(flowInput)).not.toHaveProperty('onAnalysisFailure');
    const refused = patternInputSchemas.metacognitive.safeParse({ ...flowInput, onAnalysisFailure: 'sometimes' });
    expect(refused.success).toBe(false);
    expect(refused.error?.issues[0]?.path).toEqual(['onAnalysisFailure']);
  });

  it('is exhausted at max attempts, without paying for an analysis it could not follow', async () => {
    const script: Script = (request) => (isAnalysis(request) ? analysis({}) : new ModelError('unavailable', 'down'));
    const { output, inputs } = run(script, { maxAttempts: 2 });
    const result = await output;
    expect(result).toMatchObject({ status: 'exhausted', result: { fallback: true }, usage: { calls: 3 } });
    expect(result.reason).toBe('no attempt succeeded in 2 attempts; in the last one the microtask failed (unavailable: down)');
    expect(inputs.map((i) => i.key)).toEqual(['mc/run/0', 'mc/analyze/0', 'mc/run/1']);
    expect(result.attempts[1].analysis).toBeUndefined();
  });

  it('treats a failed check as a failed attempt: its diagnostics reach the analysis, and the next attempt passes', async () => {
    const script: Script = (request) =>
      isAnalysis(request)
        ? analysis({ adjustments: { promptAdditions: ['List every breaking change.'] } })
        : request.system.includes('breaking') ? 'summary with breaking changes' : 'summary';
    const check = async ({ output, key }: CheckInput): Promise<CheckResult> => {
      expect(key).toMatch(/^mc\/check\/\d$/);
      return output === 'summary' ? { ok: false, diagnostics: ['the breaking change in 2.0 is missing'] } : { ok: true, diagnostics: [] };
    };
    const { output, model } = run(script, { check: true }, check);
    const result = await output;
    expect(result).toMatchObject({ status: 'done', result: 'summary with breaking changes', usage: { calls: 3 } });
    expect(result.attempts[0]).toMatchObject({ envelope: { success: true }, checkOk: false, diagnostics: ['the breaking change in 2.0 is missing'] });
    expect(result.attempts[1]).toMatchObject({ checkOk: true, diagnostics: [] });
    const data = model.calls[1]!.request.data as any;
    expect(data.failed).toMatchObject({ output: 'summary', checkDiagnostics: ['the breaking change in 2.0 is missing'] });
    expect(data.failed.failure).toContain('the check rejected the answer');
  });

  it('counts a check that throws as a failed check, and returns the rejected answer when nothing better came', async () => {
    const check = async (): Promise<CheckResult> => {
      throw new Error('tsc crashed');
    };
    const result = await run(['draft'], { check: true, maxAttempts: 1 }, check).output;
    expect(result).toMatchObject({ status: 'exhausted', result: 'draft' });
    expect(result.attempts[0]).toMatchObject({ checkOk: false, diagnostics: ['the check itself failed: tsc crashed'] });
  });

  it('stops cleanly before a call that the budget does not allow', async () => {
    // A cut-off answer was paid for: its tokens count against the budget.
    const paid = { ...zeroUsage(), outputTokens: 50, calls: 1 };
    const failing: Script = (request) => (isAnalysis(request) ? analysis({}) : new ModelError('max_tokens', 'cut off', { usage: paid }));
    const beforeAnalysis = await run(failing, { budget: { maxCalls: 1 } }).output;
    expect(beforeAnalysis).toMatchObject({ status: 'budget_exceeded', result: { fallback: true }, usage: { calls: 1 } });
    expect(beforeAnalysis.reason).toContain('1 model call is spent');

    const beforeRetry = await run(failing, { budget: { maxCalls: 2 } }).output;
    expect(beforeRetry).toMatchObject({ status: 'budget_exceeded', usage: { calls: 2 } });
    expect(beforeRetry.attempts).toHaveLength(1);
    expect(beforeRetry.attempts[0].analysis).toMatchObject({ retry: true });

    const tokens = await run(failing, { budget: { maxTokens: 1 } }).output;
    expect(tokens).toMatchObject({ status: 'budget_exceeded', usage: { calls: 1, outputTokens: 50 } });
    expect(tokens.reason).toContain('1 tokens');
  });

  it('survives a JSON round trip of its snapshot while analyzing and finishes with the same output', async () => {
    // Measured durations are the one thing two runs cannot share.
    const timeless = (output: any) => ({
      ...output,
      attempts: output.attempts.map((a: any) => ({ ...a, envelope: { ...a.envelope, durationMs: 0 } })),
    });
    const uninterrupted = await run(learner).output;
    const s = recorded(learner);
    const machine = metacognitiveMachine.provide({ actors: { microtask: s.microtask } });
    const { output, persisted } = await roundTrip(
      machine,
      input,
      (snapshot) => snapshot.matches('analyzing') && snapshot.context.attempt === 1,
      coverage.inspect,
    );
    expect(JSON.stringify(persisted)).toContain('claude-larger');
    expect(timeless(output)).toEqual(timeless(uninterrupted));
    expect(output.status).toBe('done');
  });
});
