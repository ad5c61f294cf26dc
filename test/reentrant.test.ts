import { describe, expect, it } from 'vitest';
import { createActor, fromPromise, toPromise, waitFor } from 'xstate';
import { createWaitTimerLogic } from '../src/actors/waitTimer.js';
import { ModelError } from '../src/actors/model/ModelError.js';
import type { ModelRequest } from '../src/actors/model/ModelPort.js';
import type { ScriptedAnswer, ScriptedCall } from '../src/actors/model/ScriptedModel.js';
import type { CheckInput, CheckResult } from '../src/machines/common.js';
import { reentrantMachine, type ReentrantInput, type Revision } from '../src/machines/reentrant.js';
import { roundTrip, runToEnd, scripted, stateCoverage } from './support/flows.js';

const coverage = stateCoverage(reentrantMachine);

const input: ReentrantInput = {
  key: 're',
  task: { taskType: 'edit', system: 'You edit release notes.', prompt: 'Tighten these release notes.' },
  review: { taskType: 'review', system: 'You review release notes: short, accurate, for users.', prompt: 'Review the output.' },
  input: 'v0',
  maxRevisions: 2,
};

const isReview = (request: ModelRequest<unknown>) => request.schemaName === 'review';
const versionOf = (text: string) => Number(text.slice(1));

/**
 * Each pass turns its input `vN` into `vN+1`, so an output shows which input it was made
 * from; the reviewer approves the versions in `approve` and asks the others to be shorter.
 * Stateless, so a restored flow gets the same answers.
 */
function editorAndReviewer(approve: number[], overrides: { process?: (n: number) => ScriptedAnswer | undefined; review?: (n: number) => ScriptedAnswer | undefined } = {}) {
  return (request: ModelRequest<unknown>): ScriptedAnswer => {
    if (isReview(request)) {
      const n = versionOf((request.data as { output: string }).output);
      return overrides.review?.(n) ?? { value: { approved: approve.includes(n), feedback: approve.includes(n) ? '' : `v${n} is too long` } };
    }
    const n = versionOf((request.data as { input: string }).input);
    return overrides.process?.(n) ?? `v${n + 1}`;
  };
}

const run = (
  script: Parameters<typeof scripted>[0],
  overrides: Partial<ReentrantInput> = {},
  check?: (i: CheckInput) => Promise<CheckResult>,
) => {
  const s = scripted(script);
  const machine = reentrantMachine.provide({
    actors: { microtask: s.microtask, ...(check ? { check: fromPromise<CheckResult, CheckInput>(({ input }) => check(input)) } : {}) },
  });
  return { ...s, machine, output: runToEnd(machine, { ...input, ...overrides }, coverage.inspect) };
};

const processCalls = (calls: readonly ScriptedCall[]) => calls.filter((call) => call.request.schemaName !== 'review');

describe('the re-entrant pipeline', () => {
  it('is done after one pass when the first output is approved', async () => {
    const { output, model, results } = run(editorAndReviewer([1]));
    const result = await output;
    expect(result).toMatchObject({ status: 'done', output: 'v1', approved: true, passes: 1, usage: { calls: 2 } });
    expect(result.reason).toBeUndefined();
    expect(result.revisions).toEqual([
      { pass: 0, input: 'v0', output: 'v1', review: { approved: true, feedback: '' }, diagnostics: [], checkOk: true },
    ]);
    expect(model.calls[0]!.request).toMatchObject({ prompt: input.task.prompt, data: { input: 'v0' } });
    expect(model.calls[1]!.request).toMatchObject({ system: input.review!.system, schemaName: 'review' });
    // The reviewer judges against the task with the flow's input, and sees the output.
    expect(model.calls[1]!.request.data).toMatchObject({ task: { prompt: input.task.prompt, data: { input: 'v0' } }, output: 'v1' });
    expect(await results.get('re/process/0')).toMatchObject({ result: 'v1' });
    expect(await results.get('re/review/0')).toMatchObject({ result: { approved: true } });
  });

  it("feeds each pass's output to the next pass as its input, with the review's feedback in the prompt", async () => {
    const task = { ...input.task, data: { product: 'orchestrator' } };
    const { output, model, results } = run(editorAndReviewer([3]), { task });
    const result = await output;
    expect(result).toMatchObject({ status: 'done', output: 'v3', approved: true, passes: 3, usage: { calls: 6 } });
    expect(result.revisions.map((r: Revision) => [r.pass, r.input, r.output, r.review?.approved])).toEqual([
      [0, 'v0', 'v1', false],
      [1, 'v1', 'v2', false],
      [2, 'v2', 'v3', true],
    ]);

    const [first, second] = processCalls(model.calls);
    expect(first!.request.data).toEqual({ context: { product: 'orchestrator' }, input: 'v0' });
    expect(first!.request.prompt).toBe(task.prompt);
    // Pass 1's input is pass 0's output, and its prompt says so and carries the feedback.
    expect(second!.request.data).toEqual({ context: { product: 'orchestrator' }, input: 'v1' });
    expect(second!.request.prompt).toContain(task.prompt);
    expect(second!.request.prompt).toContain('your own previous output');
    expect(second!.request.prompt).toContain('v1 is too long');
    expect(await results.get('re/process/1')).toMatchObject({ result: 'v2' });
    expect(await results.get('re/review/2')).toMatchObject({ result: { approved: true } });
  });

  it('stops at max revisions with the last output and the whole history', async () => {
    const { output, model } = run(editorAndReviewer([]));
    const result = await output;
    expect(result).toMatchObject({ status: 'exhausted', output: 'v3', approved: false, passes: 3, usage: { calls: 6 } });
    expect(result.reason).toContain('3 passes (2 revisions)');
    expect(result.revisions).toEqual([
      { pass: 0, input: 'v0', output: 'v1', review: { approved: false, feedback: 'v1 is too long' }, diagnostics: [], checkOk: true },
      { pass: 1, input: 'v1', output: 'v2', review: { approved: false, feedback: 'v2 is too long' }, diagnostics: [], checkOk: true },
      { pass: 2, input: 'v2', output: 'v3', review: { approved: false, feedback: 'v3 is too long' }, diagnostics: [], checkOk: true },
    ]);
    expect(model.calls).toHaveLength(6);

    const once = await run(editorAndReviewer([]), { maxRevisions: 0 }).output;
    expect(once).toMatchObject({ status: 'exhausted', output: 'v1', passes: 1 });
  });

  it('counts a failed review, or one that does not fit the schema, as not approved and records why', async () => {
    const review = (n: number): ScriptedAnswer | undefined =>
      n === 1 ? new ModelError('unavailable', 'reviewer 503') : n === 2 ? { value: { approved: 'yes' } } : undefined;
    const { output, model } = run(editorAndReviewer([1, 2, 3], { review }));
    const result = await output;
    expect(result).toMatchObject({ status: 'done', output: 'v3', passes: 3 });
    expect(result.revisions[0]).toMatchObject({ output: 'v1', review: null, error: expect.stringMatching(/^review unavailable: reviewer 503/) });
    expect(result.revisions[1]).toMatchObject({ output: 'v2', review: null, error: expect.stringMatching(/^review invalid_output/) });
    expect(result.revisions[2]).toMatchObject({ review: { approved: true }, checkOk: true });
    expect(result.revisions[2].error).toBeUndefined();
    expect(processCalls(model.calls)[1]!.request.prompt).toContain('could not be reviewed');
  });

  it('fails when the first pass fails, without a review', async () => {
    const { output, model } = run(() => new ModelError('unavailable', 'editor down'));
    const result = await output;
    expect(result).toMatchObject({ status: 'failed', output: undefined, approved: false, passes: 1 });
    expect(result.reason).toContain('editor down');
    expect(result.revisions).toEqual([
      {
        pass: 0,
        input: 'v0',
        output: undefined,
        review: null,
        diagnostics: [],
        checkOk: false,
        error: expect.stringMatching(/^process unavailable: editor down/),
      },
    ]);
    expect(model.calls).toHaveLength(1);
  });

  it('stops with the last output, not approved, when a later pass fails', async () => {
    const process = (n: number) => (n === 1 ? new ModelError('unavailable', 'editor down') : undefined);
    const { output, model } = run(editorAndReviewer([], { process }));
    const result = await output;
    // A failed call counts as a call (against maxCalls) even when no tokens are known.
    expect(result).toMatchObject({ status: 'exhausted', output: 'v1', approved: false, passes: 2, usage: { calls: 3 } });
    expect(result.reason).toMatch(/pass 1 failed .*editor down.*pass 0 is returned/);
    expect(result.revisions[1]).toMatchObject({ pass: 1, input: 'v1', output: undefined, review: null, error: expect.stringContaining('editor down') });
    expect(model.calls).toHaveLength(3);
  });

  it('checks each output first: diagnostics reach the reviewer and the next pass, and a failed check is never approved', async () => {
    const keys: string[] = [];
    const check = async ({ key, output }: CheckInput): Promise<CheckResult> => {
      keys.push(key);
      return output === 'v1' ? { ok: false, diagnostics: ['mentions internal ticket OPS-12'] } : { ok: true, diagnostics: [] };
    };
    const { output, model } = run(editorAndReviewer([1, 2]), { check: true }, check);
    const result = await output;
    expect(result).toMatchObject({ status: 'done', output: 'v2', passes: 2 });
    expect(result.revisions[0]).toMatchObject({ review: { approved: true }, checkOk: false, diagnostics: ['mentions internal ticket OPS-12'] });
    expect(result.revisions[1]).toMatchObject({ checkOk: true, diagnostics: [] });
    expect(keys).toEqual(['re/check/0', 're/check/1']);
    expect(model.calls[1]!.request.data).toMatchObject({ checkDiagnostics: ['mentions internal ticket OPS-12'] });
    expect(model.calls[2]!.request.prompt).toContain('mentions internal ticket OPS-12');
    expect(model.calls[2]!.request.data).toEqual({ input: 'v1' });
  });

  it('treats a check that throws as a failed check with its message', async () => {
    const check = async ({ output }: CheckInput): Promise<CheckResult> => {
      if (output === 'v1') throw new Error('linter crashed');
      return { ok: true, diagnostics: [] };
    };
    const result = await run(editorAndReviewer([1, 2]), { check: true }, check).output;
    expect(result.revisions[0]).toMatchObject({ checkOk: false, diagnostics: ['the check itself failed: linter crashed'] });
    expect(result).toMatchObject({ status: 'done', output: 'v2' });
  });

  it('stops cleanly before a call that the budget does not allow, keeping the last output', async () => {
    const beforeReview = await run(editorAndReviewer([]), { budget: { maxCalls: 3 } }).output;
    expect(beforeReview).toMatchObject({ status: 'budget_exceeded', output: 'v2', approved: false, passes: 2, usage: { calls: 3 } });
    expect(beforeReview.revisions[1]).toMatchObject({ input: 'v1', output: 'v2', review: null, error: 'not reviewed: the budget was spent' });
    expect(beforeReview.reason).toContain('3 model calls');

    const beforeRevision = await run(editorAndReviewer([]), { budget: { maxCalls: 2 } }).output;
    expect(beforeRevision).toMatchObject({ status: 'budget_exceeded', output: 'v1', passes: 1, usage: { calls: 2 } });
    expect(beforeRevision.revisions[0].review).toEqual({ approved: false, feedback: 'v1 is too long' });

    const tokens = await run(editorAndReviewer([1]), { budget: { maxTokens: 1 } }).output;
    expect(tokens).toMatchObject({ status: 'budget_exceeded', output: 'v1', approved: false, usage: { calls: 1 } });
    expect(tokens.reason).toContain('1 tokens');
  });

  it('survives a JSON round trip of its snapshot mid-flow and finishes with the same output', async () => {
    const uninterrupted = await run(editorAndReviewer([3])).output;
    const s = scripted(editorAndReviewer([3]));
    const machine = reentrantMachine.provide({ actors: { microtask: s.microtask } });
    const { output, persisted } = await roundTrip(
      machine,
      input,
      (snapshot) => snapshot.matches('reviewing') && snapshot.context.pass === 1,
      coverage.inspect,
    );
    expect(persisted).toMatchObject({ value: 'reviewing', context: { pass: 1, current: { input: 'v1', output: 'v2' } } });
    expect(output).toEqual(uninterrupted);
    // The restored flow went on from pass 1: no process call was made twice.
    expect(processCalls(s.model.calls).map((call) => (call.request.data as { input: string }).input)).toEqual(['v0', 'v1', 'v2']);
  });
});

describe('the reentrant pipeline reviewed by a person', () => {
  it('waits in awaitingReview for each pass and goes on with the answer', async () => {
    const s = scripted(editorAndReviewer([]));
    const machine = reentrantMachine.provide({ actors: { microtask: s.microtask, waitTimer: createWaitTimerLogic() } });
    const actor = createActor(machine, { input: { ...input, review: undefined, personReview: {} }, inspect: coverage.inspect });
    actor.start();
    await waitFor(actor, (snap) => snap.matches('awaitingReview'));
    actor.send({ type: 'review', data: { approved: false, feedback: 'say who benefits' } });
    await waitFor(actor, (snap) => snap.matches('awaitingReview') && snap.context.pass === 1);
    expect(s.model.calls[1]!.request.prompt).toContain('say who benefits');
    actor.send({ type: 'review', data: { approved: true, feedback: '' } });
    const output = await toPromise(actor);
    expect(output).toMatchObject({ status: 'done', output: 'v2', approved: true, passes: 2 });
    expect(s.model.calls.every((c) => c.request.schemaName !== 'review')).toBe(true);
  });
});
