import { describe, expect, it } from 'vitest';
import { createActor, fromPromise, toPromise, waitFor } from 'xstate';
import { createWaitTimerLogic } from '../src/actors/waitTimer.js';
import type { ModelRequest } from '../src/actors/model/ModelPort.js';
import { ModelError } from '../src/actors/model/ModelError.js';
import type { CheckInput, CheckResult } from '../src/machines/common.js';
import { feedbackLoopMachine, type FeedbackLoopInput } from '../src/machines/feedbackLoop.js';
import { roundTrip, runToEnd, scripted, stateCoverage } from './support/flows.js';

const coverage = stateCoverage(feedbackLoopMachine);

const input: FeedbackLoopInput = {
  key: 'fb',
  task: { taskType: 'write', system: 'You write haiku.', prompt: 'Write a haiku about queues.' },
  verify: { taskType: 'verify', system: 'You judge haiku: 5-7-5, concrete imagery.', prompt: 'Judge the output.' },
  threshold: 0.8,
  maxIterations: 3,
};

/** Drafts "draft N" (N = the revision), and judges each draft by a table of scores. */
function writerAndJudge(scores: number[]) {
  let drafts = 0;
  return (request: ModelRequest<unknown>) => {
    if (request.schemaName === 'verdict') {
      const output = (request.data as { output: string }).output;
      const n = Number(output.split(' ')[1]);
      return { value: { score: scores[n] ?? 0, feedback: `draft ${n} needs more imagery` } };
    }
    return `draft ${drafts++}`;
  };
}

const run = (script: Parameters<typeof scripted>[0], overrides: Partial<FeedbackLoopInput> = {}, check?: (i: CheckInput) => Promise<CheckResult>) => {
  const s = scripted(script);
  const machine = feedbackLoopMachine.provide({
    actors: { microtask: s.microtask, ...(check ? { check: fromPromise<CheckResult, CheckInput>(({ input }) => check(input)) } : {}) },
  });
  return { ...s, machine, output: runToEnd(machine, { ...input, ...overrides }, coverage.inspect) };
};

describe('the feedback loop', () => {
  it('is done at once when the first attempt meets the threshold', async () => {
    const { output, model } = run(writerAndJudge([0.9]));
    expect(await output).toMatchObject({ status: 'done', result: 'draft 0', score: 0.9, iterations: 1 });
    expect(model.calls).toHaveLength(2);
  });

  it('revises with the last attempt and its feedback until the threshold is met', async () => {
    const { output, model } = run(writerAndJudge([0.3, 0.6, 0.85]));
    const result = await output;
    expect(result).toMatchObject({ status: 'done', result: 'draft 2', score: 0.85, iterations: 3 });
    const revision = model.calls[4]!.request.prompt;
    expect(revision).toContain('draft 1');
    expect(revision).toContain('draft 1 needs more imagery');
    expect(revision).toContain('scored 0.60');
    expect(result.usage.calls).toBe(6);
  });

  it('returns the best attempt, with the whole history, at max iterations', async () => {
    const result = await run(writerAndJudge([0.3, 0.7, 0.5])).output;
    expect(result).toMatchObject({ status: 'exhausted', result: 'draft 1', score: 0.7, iterations: 3 });
    expect(result.history.map((a: { score: number }) => a.score)).toEqual([0.3, 0.7, 0.5]);
    expect(result.reason).toContain('threshold 0.8');
  });

  it('goes on after a failed generation, and a verdict that does not fit is no score', async () => {
    const answers = [new ModelError('unavailable', '503'), 'draft 0', { value: { score: 'great' } }, 'draft 1', { value: { score: 0.95, feedback: '' } }];
    const result = await run(answers).output;
    expect(result).toMatchObject({ status: 'done', result: 'draft 1', iterations: 3 });
    expect(result.history[0].error).toMatch(/generation unavailable/);
    expect(result.history[1]).toMatchObject({ score: null, error: expect.stringMatching(/verification invalid_output/) });
  });

  it('fails when no attempt produced any output', async () => {
    const result = await run(() => new ModelError('unavailable', 'down'), { maxIterations: 2 }).output;
    expect(result).toMatchObject({ status: 'failed', result: undefined, iterations: 2 });
    expect(result.reason).toContain('down');
  });

  it('checks each attempt deterministically first: diagnostics reach the verifier and the revision, and a failed check never passes', async () => {
    const check = async ({ output }: CheckInput): Promise<CheckResult> =>
      output === 'draft 0' ? { ok: false, diagnostics: ['line 2 has 9 syllables'] } : { ok: true, diagnostics: [] };
    const { output, model } = run(writerAndJudge([0.99, 0.9]), { check: true }, check);
    const result = await output;
    expect(result).toMatchObject({ status: 'done', result: 'draft 1', iterations: 2 });
    expect(result.history[0]).toMatchObject({ score: 0.99, checkOk: false, diagnostics: ['line 2 has 9 syllables'] });
    expect(JSON.stringify(model.calls[1]!.request.data)).toContain('line 2 has 9 syllables');
    expect(model.calls[2]!.request.prompt).toContain('line 2 has 9 syllables');
  });

  it('treats a check that throws as a failed check with its message', async () => {
    let first = true;
    const check = async (): Promise<CheckResult> => {
      if (first) {
        first = false;
        throw new Error('tsc crashed');
      }
      return { ok: true, diagnostics: [] };
    };
    const result = await run(writerAndJudge([0.9, 0.9]), { check: true }, check).output;
    expect(result.history[0]).toMatchObject({ checkOk: false, diagnostics: ['the check itself failed: tsc crashed'] });
    expect(result.status).toBe('done');
  });

  it('stops cleanly before a call that the budget does not allow, keeping the best so far', async () => {
    const beforeVerify = await run(writerAndJudge([0.3, 0.5]), { budget: { maxCalls: 3 } }).output;
    expect(beforeVerify).toMatchObject({ status: 'budget_exceeded', result: 'draft 0', score: 0.3, usage: { calls: 3 } });
    expect(beforeVerify.history[1]).toMatchObject({ output: 'draft 1', score: null, error: 'not verified: the budget was spent' });
    expect(beforeVerify.reason).toContain('3 model calls');

    const beforeRevision = await run(writerAndJudge([0.3]), { budget: { maxCalls: 2 } }).output;
    expect(beforeRevision).toMatchObject({ status: 'budget_exceeded', result: 'draft 0', usage: { calls: 2 } });

    const tokens = await run(writerAndJudge([0.3]), { budget: { maxTokens: 1 } }).output;
    expect(tokens).toMatchObject({ status: 'budget_exceeded', result: 'draft 0', usage: { calls: 1 } });
    expect(tokens.reason).toContain('1 tokens');
  });

  it('survives a JSON round trip of its snapshot mid-flow and finishes with the same output', async () => {
    const uninterrupted = await run(writerAndJudge([0.3, 0.9])).output;
    const s = scripted(writerAndJudge([0.3, 0.9]));
    const machine = feedbackLoopMachine.provide({ actors: { microtask: s.microtask } });
    const { output, persisted } = await roundTrip(
      machine,
      input,
      (snapshot) => snapshot.matches('verifying') && snapshot.context.iteration === 1,
      coverage.inspect,
    );
    expect(JSON.stringify(persisted)).toContain('"iteration":1');
    expect(output).toEqual(uninterrupted);
  });
});

describe('the feedback loop scored by a person', () => {
  it('waits in awaitingScore for each attempt, revises with the score and feedback, and times out to the best so far', async () => {
    const s = scripted(writerAndJudge([]));
    const machine = feedbackLoopMachine.provide({ actors: { microtask: s.microtask, waitTimer: createWaitTimerLogic() } });
    const actor = createActor(machine, { input: { ...input, verify: undefined, personVerify: { maxWaitMs: 200 } }, inspect: coverage.inspect });
    actor.start();
    await waitFor(actor, (snap) => snap.matches('awaitingScore'));
    actor.send({ type: 'score', data: { score: 0.5, feedback: 'more imagery' } });
    await waitFor(actor, (snap) => snap.matches('awaitingScore') && snap.context.iteration === 1);
    expect(s.model.calls[1]!.request.prompt).toContain('more imagery');
    const output = await toPromise(actor);
    // No verifier call: a person scores; the second attempt timed out unscored.
    expect(s.model.calls.map((c) => c.request.schemaName)).toEqual([undefined, undefined]);
    expect(output).toMatchObject({ status: 'exhausted', result: 'draft 0', score: 0.5, iterations: 2 });
    expect(output.reason).toContain('no person scored attempt 2 within 200 ms');
  });
});
