import { describe, expect, it } from 'vitest';
import { fromPromise } from 'xstate';
import type { MicrotaskInput, MicrotaskResult } from '../src/contracts/microtask.js';
import { ModelError } from '../src/actors/model/ModelError.js';
import type { ModelRequest } from '../src/actors/model/ModelPort.js';
import type { ScriptedAnswer } from '../src/actors/model/ScriptedModel.js';
import type { CheckInput, CheckResult } from '../src/machines/common.js';
import { ADJUSTMENTS_HEADING, metacognitiveMachine } from '../src/machines/metacognitive.js';
import { progressiveMachine, type CodeOnlyInput, type CodeOnlyOutput, type ProgressiveInput } from '../src/machines/progressive.js';
import { zeroUsage } from '../src/contracts/usage.js';
import { roundTrip, runToEnd, scripted, stateCoverage } from './support/flows.js';

const coverage = stateCoverage(progressiveMachine, metacognitiveMachine);

const task = { taskType: 'title', system: 'You write titles.', prompt: 'Title this article about queue backpressure.' };
const specialist = { system: 'You are the headline editor of a systems engineering magazine.' };
const input: ProgressiveInput = {
  key: 'p',
  task,
  verify: { taskType: 'verify', system: 'You judge titles: specific, under ten words.', prompt: 'Judge the title.' },
  threshold: 0.8,
  specialist,
};

/** A cut-off answer: it fails the microtask and, having been paid for, costs tokens. */
const cutOff = () => new ModelError('max_tokens', 'cut off', { usage: { ...zeroUsage(), outputTokens: 40, calls: 1 } });

interface World {
  /** What the code-only solver gives; no solution when unset. */
  code?: CodeOnlyOutput | Error;
  /** What each approach answers; the defaults are their names. */
  general?: ScriptedAnswer;
  specialized?: ScriptedAnswer;
  /** A specialist who has seen the specialized level's attempt (level 3 after level 2). */
  informed?: ScriptedAnswer;
  /** A specialist whose system prompt carries the metacognitive adjustments. */
  adjusted?: ScriptedAnswer;
  analysis?: ScriptedAnswer;
  /** Outputs whose verdict does not fit the verdict schema. */
  unfit?: string[];
  /** The verifier's score for each output (0 when not listed). */
  scores: Record<string, number>;
}

const isVerdict = (request: ModelRequest<unknown>) => request.schemaName === 'verdict';

/**
 * Answers by what the request carries, never by call order, so a restored run gets the
 * same answers: which system prompt, what the prompt shows of lower levels, which schema.
 */
const model = (w: World) => (request: ModelRequest<unknown>): ScriptedAnswer => {
  if (isVerdict(request)) {
    const output = String((request.data as { output: unknown }).output);
    if (w.unfit?.includes(output)) return { value: { score: 'great' } };
    return { value: { score: w.scores[output] ?? 0, feedback: `"${output}" is too vague` } };
  }
  if (request.schemaName === 'failureAnalysis') {
    return (
      w.analysis ?? {
        value: { rootCause: 'cut off', retry: true, adjustments: { promptAdditions: ['Give the title only.'] }, reason: 'shorter will fit' },
      }
    );
  }
  if (request.system === task.system) return w.general ?? 'general answer';
  if (request.system.includes(ADJUSTMENTS_HEADING)) return w.adjusted ?? 'adjusted answer';
  if (request.prompt.includes('approach="specialized"')) return w.informed ?? 'informed answer';
  return w.specialized ?? 'specialized answer';
};

function world(w: World, overrides: Partial<ProgressiveInput> = {}, check?: (i: CheckInput) => Promise<CheckResult>) {
  const s = scripted(model(w));
  const inputs: MicrotaskInput[] = [];
  const microtask = fromPromise<MicrotaskResult, MicrotaskInput>(({ input, signal }) => {
    inputs.push(input);
    return s.runner.run(input, signal);
  });
  const checks: string[] = [];
  const checkActor = check
    ? {
        check: fromPromise<CheckResult, CheckInput>(({ input }) => {
          checks.push(input.key);
          return check(input);
        }),
      }
    : {};
  const codeOnly = fromPromise<CodeOnlyOutput, CodeOnlyInput>(async () => {
    if (w.code instanceof Error) throw w.code;
    return w.code ?? { reason: 'no rule for this kind of article' };
  });
  const machine = progressiveMachine.provide({
    actors: { microtask, codeOnly, ...checkActor, metacognitive: metacognitiveMachine.provide({ actors: { microtask, ...checkActor } }) },
  });
  const run = () => runToEnd(machine, { ...input, ...overrides }, coverage.inspect);
  return { ...s, inputs, checks, machine, run };
}

const keys = (inputs: MicrotaskInput[]) => inputs.map((i) => i.key);

describe('progressive specialization', () => {
  it('stops at level 0 when the code-only answer passes the verifier', async () => {
    const w = world({ code: { output: 'Backpressure in queues' }, scores: { 'Backpressure in queues': 0.9 } });
    const result = await w.run();
    expect(result).toMatchObject({ status: 'done', level: 0, result: 'Backpressure in queues', score: 0.9, usage: { calls: 1 } });
    expect(result.levels).toEqual([
      { level: 0, name: 'code-only', output: 'Backpressure in queues', score: 0.9, feedback: '"Backpressure in queues" is too vague', diagnostics: [], passed: true },
    ]);
    expect(keys(w.inputs)).toEqual(['p/level0/verify']);
    // The verifier is told what was asked and what was answered.
    expect(w.model.calls[0]!.request.data).toMatchObject({ task: { prompt: task.prompt }, output: 'Backpressure in queues' });
  });

  it('goes to level 1 when code alone has no solution, and says so', async () => {
    const w = world({ scores: { 'general answer': 0.85 } });
    const result = await w.run();
    expect(result).toMatchObject({ status: 'done', level: 1, result: 'general answer', score: 0.85, usage: { calls: 2 } });
    expect(result.levels[0]).toEqual({
      level: 0,
      name: 'code-only',
      score: null,
      feedback: '',
      diagnostics: [],
      passed: false,
      reason: 'no code-only solution: no rule for this kind of article',
    });
    expect(keys(w.inputs)).toEqual(['p/level1/run', 'p/level1/verify']);
    expect(w.model.calls[0]!.request).toMatchObject({ system: task.system, prompt: task.prompt });
  });

  it('goes to level 2 with the specialist and every lower level’s answer and feedback', async () => {
    const w = world({ code: { output: 'Queues' }, scores: { Queues: 0.2, 'general answer': 0.5, 'specialized answer': 0.9 } });
    const result = await w.run();
    expect(result).toMatchObject({ status: 'done', level: 2, result: 'specialized answer', score: 0.9, usage: { calls: 5 } });
    expect(result.levels.map((l: { reason?: string }) => l.reason)).toEqual([
      'scored 0.20, below the threshold 0.8',
      'scored 0.50, below the threshold 0.8',
      undefined,
    ]);
    const level2 = w.model.calls[3]!.request;
    expect(level2.system).toBe(specialist.system);
    expect(level2.prompt).toContain(task.prompt);
    expect(level2.prompt).toContain('<attempt level="0" approach="code-only">\nQueues\n</attempt> (it scored 0.20)');
    expect(level2.prompt).toContain('"general answer" is too vague');
    expect(keys(w.inputs)).toEqual(['p/level0/verify', 'p/level1/run', 'p/level1/verify', 'p/level2/run', 'p/level2/verify']);
  });

  it('goes to level 3, whose metacognitive child analyzes its failure and retries with the adjustments', async () => {
    const w = world({ informed: cutOff(), scores: { 'general answer': 0.3, 'specialized answer': 0.6, 'adjusted answer': 0.95 } });
    const result = await w.run();
    expect(result).toMatchObject({ status: 'done', level: 3, result: 'adjusted answer', score: 0.95 });
    expect(result.levels.map((l: { name: string; passed: boolean }) => [l.name, l.passed])).toEqual([
      ['code-only', false],
      ['general', false],
      ['specialized', false],
      ['metacognitive', true],
    ]);
    expect(result.levels[2].reason).toBe('scored 0.60, below the threshold 0.8');
    expect(keys(w.inputs).slice(4)).toEqual(['p/level3/run/0', 'p/level3/analyze/0', 'p/level3/run/1', 'p/level3/verify']);
    const retry = w.inputs[6]!;
    expect(retry.system).toContain(specialist.system);
    expect(retry.system).toContain(`${ADJUSTMENTS_HEADING}\n- Give the title only.`);
    expect(retry.prompt).toContain('"specialized answer" is too vague');
    // Every call the child made is in the parent's usage: 2 + 2 + run, analysis, run + verify.
    expect(result.usage.calls).toBe(8);
  });

  it('checks each level’s output first: a failed check fails the level without a verifier call', async () => {
    const check = async ({ output }: CheckInput): Promise<CheckResult> =>
      output === 'Queues' ? { ok: false, diagnostics: ['a title needs at least two words'] } : { ok: true, diagnostics: [] };
    const w = world({ code: { output: 'Queues' }, scores: { Queues: 1, 'general answer': 0.9 } }, { check: true }, check);
    const result = await w.run();
    expect(result).toMatchObject({ status: 'done', level: 1, result: 'general answer' });
    expect(result.levels[0]).toMatchObject({
      output: 'Queues',
      score: null,
      passed: false,
      diagnostics: ['a title needs at least two words'],
      reason: 'the check rejected the output (not sent to the verifier)',
    });
    expect(keys(w.inputs)).toEqual(['p/level1/run', 'p/level1/verify']);
    expect(w.checks).toEqual(['p/level0/check', 'p/level1/check']);
  });

  it('treats a check that throws as a failed check; a passed check’s diagnostics still reach the verifier', async () => {
    let calls = 0;
    const check = async (): Promise<CheckResult> => {
      if (calls++ === 0) throw new Error('linter crashed');
      return { ok: true, diagnostics: ['warning: long title'] };
    };
    const w = world({ code: { output: 'Queues' }, specialized: 'x', scores: { 'general answer': 0.1, x: 0.9 } }, { check: true }, check);
    const result = await w.run();
    expect(result.levels[0]).toMatchObject({ passed: false, diagnostics: ['the check itself failed: linter crashed'] });
    // Diagnostics of a passed check still reach the verifier and the report.
    expect(result.levels[1]).toMatchObject({ diagnostics: ['warning: long title'], score: 0.1 });
    expect(JSON.stringify(w.model.calls[1]!.request.data)).toContain('warning: long title');
    expect(result).toMatchObject({ status: 'done', level: 2 });
  });

  it('records a failed verification as no score, with its reason', async () => {
    const w = world({ code: { output: 'Queues' }, unfit: ['Queues'], scores: { 'general answer': 0.9 } });
    const result = await w.run();
    expect(result.levels[0]).toMatchObject({ output: 'Queues', score: null, passed: false, reason: expect.stringMatching(/^verification invalid_output/) });
    expect(result).toMatchObject({ status: 'done', level: 1 });
  });

  it('lets the metacognitive child run the check, and does not check its answer twice', async () => {
    const check = async ({ output }: CheckInput): Promise<CheckResult> =>
      output === 'specialized answer' ? { ok: false, diagnostics: ['ends with a period'] } : { ok: true, diagnostics: [] };
    const w = world({ scores: { 'adjusted answer': 0.9 } }, { check: true, startLevel: 3 }, check);
    const result = await w.run();
    expect(result).toMatchObject({ status: 'done', level: 3, result: 'adjusted answer', levels: [{ level: 3, passed: true }] });
    expect(w.checks).toEqual(['p/level3/check/0', 'p/level3/check/1']);
    expect(JSON.stringify(w.model.calls[1]!.request.data)).toContain('ends with a period');
  });

  it('is exhausted after level 3 fails, returning the best-scored output with every level’s report', async () => {
    const w = world({ code: { output: 'Queues' }, scores: { Queues: 0.2, 'general answer': 0.7, 'specialized answer': 0.4, 'informed answer': 0.6 } });
    const result = await w.run();
    expect(result).toMatchObject({ status: 'exhausted', level: null, result: 'general answer', score: 0.7 });
    expect(result.reason).toBe('no level reached the threshold 0.8');
    expect(result.levels.map((l: { score: number }) => l.score)).toEqual([0.2, 0.7, 0.4, 0.6]);
  });

  it('reports a level-3 child that ran out of attempts, and keeps the best lower output', async () => {
    const w = world({ informed: cutOff(), adjusted: cutOff(), scores: { 'general answer': 0.5 } }, { maxAttempts: 2 });
    const result = await w.run();
    expect(result).toMatchObject({ status: 'exhausted', result: 'general answer', score: 0.5 });
    expect(result.levels[3]).toMatchObject({ level: 3, passed: false, score: null });
    expect(result.levels[3].reason).toMatch(/^the metacognitive flow ended exhausted after 2 attempts: no attempt succeeded in 2 attempts/);
    expect(result.levels[3].output).toBeUndefined();
  });

  it('fails when no level produced any output, saying why for each', async () => {
    const w = world({
      code: new Error('parser crashed'),
      general: cutOff(),
      specialized: cutOff(),
      informed: cutOff(),
      analysis: { value: { rootCause: 'the article is empty', retry: false, adjustments: {}, reason: 'nothing to title' } },
      scores: {},
    });
    const result = await w.run();
    expect(result).toMatchObject({ status: 'failed', level: null, result: undefined, score: null });
    expect(result.levels.map((l: { reason: string }) => l.reason)).toEqual([
      'the code-only solver failed: parser crashed',
      'the microtask max_tokens: cut off',
      'the microtask max_tokens: cut off',
      'the metacognitive flow ended failed after 1 attempt: nothing to title',
    ]);
    expect(result.reason).toContain('level 3: the metacognitive flow ended failed');
  });

  it('reports a level-3 child that crashed (its own provide forgotten) as a failed level', async () => {
    const s = scripted(model({ scores: {} }));
    const machine = progressiveMachine.provide({ actors: { microtask: s.microtask, metacognitive: metacognitiveMachine } });
    const result = await runToEnd(machine, { ...input, startLevel: 3 }, coverage.inspect);
    expect(result).toMatchObject({ status: 'failed', levels: [{ level: 3, passed: false }] });
    expect(result.levels[0].reason).toMatch(/^the metacognitive flow crashed: .*"microtask" actor was not provided/);
  });

  it('stops cleanly before a call that the budget does not allow, keeping the best so far', async () => {
    const scores = { 'general answer': 0.5, 'specialized answer': 0.6 };
    const beforeVerify = await world({ scores }, { budget: { maxCalls: 3 } }).run();
    expect(beforeVerify).toMatchObject({ status: 'budget_exceeded', level: null, result: 'general answer', score: 0.5, usage: { calls: 3 } });
    expect(beforeVerify.levels[2]).toMatchObject({ output: 'specialized answer', score: null, reason: 'not verified: the budget was spent' });
    expect(beforeVerify.reason).toContain('3 model calls');

    const beforeLevel = await world({ scores }, { budget: { maxCalls: 2 } }).run();
    expect(beforeLevel).toMatchObject({ status: 'budget_exceeded', result: 'general answer', usage: { calls: 2 } });
    expect(beforeLevel.levels).toHaveLength(2);

    // The child gets what is left (2 calls): run, analysis, then no call for the retry.
    const w = world({ specialized: cutOff(), scores }, { budget: { maxCalls: 2 }, startLevel: 3 });
    const inChild = await w.run();
    expect(inChild).toMatchObject({ status: 'budget_exceeded', result: undefined, usage: { calls: 2 } });
    expect(inChild.reason).toBe('level 3: the budget of 2 model calls is spent (2 made)');
    expect(keys(w.inputs)).toEqual(['p/level3/run/0', 'p/level3/analyze/0']);
  });

  it('survives a JSON round trip of a snapshot taken inside level 3, child included, and finishes with the same output', async () => {
    const w0 = { code: { output: 'Queues' }, informed: cutOff(), scores: { Queues: 0.1, 'general answer': 0.3, 'specialized answer': 0.6, 'adjusted answer': 0.9 } };
    const uninterrupted = await world(w0).run();
    expect(uninterrupted).toMatchObject({ status: 'done', level: 3 });
    const w = world(w0);
    const { output, persisted } = await roundTrip(w.machine, input, (snapshot) => snapshot.matches('metacognitive'), coverage.inspect);
    const child = Object.values((persisted as { children: Record<string, any> }).children)[0];
    expect(child).toMatchObject({ src: 'metacognitive', snapshot: { value: 'running', context: { input: { key: 'p/level3' } } } });
    expect(output).toEqual(uninterrupted);
  });
});
