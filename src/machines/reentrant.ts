import { assign, setup } from 'xstate';
import type { MicrotaskResult } from '../contracts/microtask.js';
import { addUsage, zeroUsage, type Usage } from '../contracts/usage.js';
import type { Review } from '../contracts/answers.js';
import {
  budgetCheck,
  checkCrashed,
  checkNotProvided,
  describeFailure,
  microtaskInput,
  microtaskNotProvided,
  type Budget,
  type CheckResult,
  type FlowOutputBase,
  type FlowStatus,
  type TaskSpec,
  finalStates,
} from './common.js';
import { reviewData } from './prompts.js';
import { ReviewAnswerSchema, WAIT_TIMEOUT, waitTimerNotProvided, type PersonOption, type ReviewAnswer, type WaitDeclaration } from './waits.js';

export interface ReentrantInput {
  /** Prefix of every microtask key of this flow (flow id + path). */
  key: string;
  /** The process step, run once per pass. */
  task: TaskSpec;
  /** How the model reviews a pass's output; asked for a `review` ({approved, feedback}). Unused when a person reviews. */
  review?: TaskSpec;
  /**
   * A person reviews each pass instead of the model: the flow waits in `awaitingReview`
   * for a `review` event ({approved, feedback}); past `timeoutMs` it ends with the best
   * so far, not approved.
   */
  personReview?: PersonOption;
  /** The first pass's input; every later pass gets the previous pass's output instead. */
  input: unknown;
  /** Revisions at most after the first pass (0: one pass only). */
  maxRevisions: number;
  /** Run the deterministic `check` actor on each output before the reviewer. */
  check?: boolean;
  /** Given to the check with each output: what the output is for. */
  checkSubject?: unknown;
  budget?: Budget;
}

/** One pass: what went in, what came out, and what the check and the reviewer said of it. */
export interface Revision {
  /** 0 for the first pass, n for the n-th revision. */
  pass: number;
  input: unknown;
  /** undefined when the process step failed. */
  output: unknown;
  /** null when there is no review: the process step or the review failed, the budget was spent, or no person answered in time. */
  review: (Review & { by?: 'person' }) | null;
  diagnostics: string[];
  checkOk: boolean;
  error?: string;
}

export interface ReentrantOutput extends FlowOutputBase {
  /** The approved output; otherwise the last one a pass produced (undefined when none did). */
  output: unknown;
  approved: boolean;
  /** Passes started, failed ones included: the length of `revisions`. */
  passes: number;
  revisions: Revision[];
}

export interface ReentrantContext {
  input: ReentrantInput;
  pass: number;
  /** The pass being checked and reviewed. */
  current: { input: unknown; output: unknown; diagnostics: string[]; checkOk: boolean } | undefined;
  revisions: Revision[];
  usage: Usage;
  reason: string | undefined;
  status: FlowStatus;
}

const last = <T>(list: readonly T[]): T | undefined => list[list.length - 1];

/**
 * The pass being reviewed, with its review (or why there is none), added to the
 * revisions: the context update every way of reviewing ends with.
 */
const reviewed = (context: ReentrantContext, outcome: { review?: Revision['review']; error?: string }): Pick<ReentrantContext, 'revisions' | 'current'> => ({
  revisions: [
    ...context.revisions,
    {
      pass: context.pass,
      input: context.current!.input,
      output: context.current!.output,
      review: outcome.review ?? null,
      diagnostics: context.current!.diagnostics,
      checkOk: context.current!.checkOk,
      ...(outcome.error ? { error: outcome.error } : {}),
    },
  ],
  current: undefined,
});

const lastOutput = (revisions: readonly Revision[]): Revision | undefined =>
  last(revisions.filter((revision) => revision.output !== undefined));

/**
 * What this pass works on. A pass starts only after the previous one produced an output
 * (a failed process step ends the flow), so the previous revision always has one.
 */
const passInput = (context: ReentrantContext): unknown =>
  context.pass === 0 ? context.input.input : last(context.revisions)!.output;

const processData = (task: TaskSpec, input: unknown) => ({
  ...(task.data !== undefined ? { context: task.data } : {}),
  input,
});

/**
 * The prompt of pass 1 and later. The previous output is already the data's `input`, so
 * it is not repeated here (it can be large); the prompt says what that input is and what
 * to change in it.
 */
function revisingPrompt(task: TaskSpec, previous: Revision): string {
  const feedback = previous.review?.feedback
    ? `\n\nThe reviewer's feedback on it:\n<feedback>\n${previous.review.feedback}\n</feedback>`
    : previous.review === null
      ? '\n\nIt could not be reviewed, so there is no feedback: check it against the task yourself.'
      : '';
  const diagnostics = previous.diagnostics.length
    ? `\n\nAutomatic checks found these problems; fix every one:\n${previous.diagnostics.map((d) => `- ${d}`).join('\n')}`
    : '';
  return (
    `${task.prompt}\n\nThis is revision ${previous.pass + 1}: the \`input\` in the data is your own previous output ` +
    `for this task, not new material. Revise it.` +
    feedback +
    diagnostics +
    '\n\nGive the complete revised output (not a list of changes).'
  );
}

/**
 * Process → (check) → review → done when approved; otherwise the output becomes the next
 * pass's input, revised with the review's feedback and the check's diagnostics, for at
 * most `maxRevisions` revisions; the whole history is kept.
 *
 * A failed process step ends the flow: the microtask layer already retried what can be
 * retried, and the next pass would get the same input again. Without any output it is
 * `failed`; after an earlier pass produced one it is `exhausted` (see FlowStatus: it
 * returns its best, which is usable but not approved), with the failure as the reason.
 */
export const reentrantMachine = setup({
  types: {
    input: {} as ReentrantInput,
    context: {} as ReentrantContext,
    output: {} as ReentrantOutput,
    events: {} as { type: 'review'; data: ReviewAnswer; eventId?: string } | { type: typeof WAIT_TIMEOUT },
  },
  actors: { microtask: microtaskNotProvided(), check: checkNotProvided(), waitTimer: waitTimerNotProvided() },
  guards: {
    personReviews: ({ context }) => context.input.personReview !== undefined,
    withinBudget: ({ context }) => budgetCheck(context.input.budget, context.usage).ok,
    processed: (_, params: { result: MicrotaskResult }) => params.result.success,
    checkEnabled: ({ context }) => context.input.check === true,
    // A failed check is never approved, whatever the reviewer says.
    approved: ({ context }) => {
      const revision = last(context.revisions);
      return !!revision && revision.checkOk && revision.review?.approved === true;
    },
    revisionsLeft: ({ context }) => context.pass < context.input.maxRevisions,
    hasOutput: ({ context }) => lastOutput(context.revisions) !== undefined,
  },
  actions: {
    countUsage: assign(({ context }, params: { result: MicrotaskResult }) => ({
      usage: addUsage(context.usage, params.result.usage),
    })),
    holdOutput: assign(({ context }, params: { result: MicrotaskResult }) => ({
      current: { input: passInput(context), output: params.result.result, diagnostics: [], checkOk: true },
    })),
    recordProcessFailure: assign(({ context }, params: { result: MicrotaskResult }) => ({
      revisions: [
        ...context.revisions,
        {
          pass: context.pass,
          input: passInput(context),
          output: undefined,
          review: null,
          diagnostics: [],
          checkOk: false,
          error: `process ${describeFailure(params.result)}`,
        },
      ],
    })),
    recordCheck: assign(({ context }, params: { check: CheckResult }) => ({
      current: { ...context.current!, diagnostics: params.check.diagnostics, checkOk: params.check.ok },
    })),
    recordCheckError: assign(({ context }, params: { error: unknown }) => ({
      current: {
        ...context.current!,
        diagnostics: [checkCrashed(params.error)],
        checkOk: false,
      },
    })),
    recordReview: assign(({ context }, params: { result: MicrotaskResult }) => {
      const review = params.result.success ? (params.result.result as Review) : null;
      return reviewed(context, review ? { review: { approved: review.approved, feedback: review.feedback } } : { error: `review ${describeFailure(params.result)}` });
    }),
    recordPersonReview: assign(({ context }, params: { answer: ReviewAnswer }) =>
      reviewed(context, { review: { approved: params.answer.approved, feedback: params.answer.feedback, by: 'person' } }),
    ),
    recordReviewTimeout: assign(({ context }) => ({
      ...reviewed(context, { error: `not reviewed: no person answered within ${context.input.personReview?.maxWaitMs} ms` }),
      reason: `no person reviewed pass ${context.pass} within ${context.input.personReview?.maxWaitMs} ms; the output of pass ${context.pass} is returned, not approved`,
    })),
    recordUnreviewed: assign(({ context }) => reviewed(context, { error: 'not reviewed: the budget was spent' })),
    setStatus: assign((_, params: { status: FlowStatus }) => ({ status: params.status })),
    nextPass: assign(({ context }) => ({ pass: context.pass + 1 })),
    noteBudget: assign(({ context }) => {
      const check = budgetCheck(context.input.budget, context.usage);
      return { reason: check.ok ? undefined : check.reason };
    }),
    noteExhausted: assign(({ context }) => ({
      reason: `no output was approved in ${context.input.maxRevisions + 1} passes (${context.input.maxRevisions} revisions)`,
    })),
    noteStoppedAfterFailure: assign(({ context }) => ({
      reason: `pass ${context.pass} failed (${last(context.revisions)?.error ?? 'unknown'}); the output of pass ${
        lastOutput(context.revisions)?.pass
      } is returned, not approved`,
    })),
    noteNoOutput: assign(({ context }) => ({
      reason: `no pass produced an output: ${last(context.revisions)?.error ?? 'unknown'}`,
    })),
  },
}).createMachine({
  id: 'reentrant',
  context: ({ input }) => ({
    input,
    pass: 0,
    current: undefined,
    revisions: [],
    usage: zeroUsage(),
    reason: undefined,
    status: 'failed',
  }),
  initial: 'processGate',
  states: {
    processGate: {
      always: [
        { guard: 'withinBudget', target: 'processing' },
        { target: 'budgetExceeded', actions: 'noteBudget' },
      ],
    },
    processing: {
      invoke: {
        src: 'microtask',
        input: ({ context }) => {
          const previous = last(context.revisions);
          return microtaskInput(context.input.task, `${context.input.key}/process/${context.pass}`, {
            data: processData(context.input.task, passInput(context)),
            ...(previous ? { prompt: revisingPrompt(context.input.task, previous) } : {}),
          });
        },
        onDone: [
          {
            guard: { type: 'processed', params: ({ event }) => ({ result: event.output }) },
            target: 'processed',
            actions: [
              { type: 'countUsage', params: ({ event }) => ({ result: event.output }) },
              { type: 'holdOutput', params: ({ event }) => ({ result: event.output }) },
            ],
          },
          {
            target: 'processFailed',
            actions: [
              { type: 'countUsage', params: ({ event }) => ({ result: event.output }) },
              { type: 'recordProcessFailure', params: ({ event }) => ({ result: event.output }) },
            ],
          },
        ],
      },
    },
    processFailed: {
      always: [
        { guard: 'hasOutput', target: 'exhausted', actions: 'noteStoppedAfterFailure' },
        { target: 'failed', actions: 'noteNoOutput' },
      ],
    },
    processed: {
      always: [{ guard: 'checkEnabled', target: 'checking' }, { target: 'reviewGate' }],
    },
    checking: {
      invoke: {
        src: 'check',
        input: ({ context }) => ({
          key: `${context.input.key}/check/${context.pass}`,
          output: context.current!.output,
          subject: context.input.checkSubject,
        }),
        onDone: { target: 'reviewGate', actions: { type: 'recordCheck', params: ({ event }) => ({ check: event.output }) } },
        onError: { target: 'reviewGate', actions: { type: 'recordCheckError', params: ({ event }) => ({ error: event.error }) } },
      },
    },
    reviewGate: {
      always: [
        { guard: 'personReviews', target: 'awaitingReview' },
        { guard: 'withinBudget', target: 'reviewing' },
        { target: 'budgetExceeded', actions: ['recordUnreviewed', 'noteBudget'] },
      ],
    },
    awaitingReview: {
      meta: { wait: { for: "a person's review of the latest pass", events: { review: ReviewAnswerSchema } } satisfies WaitDeclaration },
      invoke: { src: 'waitTimer', id: 'waitTimer', input: ({ context }) => ({ timeoutMs: context.input.personReview?.maxWaitMs }) },
      on: {
        review: {
          target: 'reviewed',
          actions: { type: 'recordPersonReview', params: ({ event }) => ({ answer: event.data }) },
        },
        [WAIT_TIMEOUT]: { target: 'exhausted', actions: 'recordReviewTimeout' },
      },
    },
    reviewing: {
      invoke: {
        src: 'microtask',
        // The reviewer judges against the task as first asked, with the flow's own input:
        // a later pass's input is only an earlier draft, which says nothing of what was wanted.
        input: ({ context }) =>
          microtaskInput(context.input.review!, `${context.input.key}/review/${context.pass}`, {
            answer: 'review',
            data: {
              ...(context.input.review!.data === undefined ? {} : { context: context.input.review!.data }),
              ...reviewData(
                { ...context.input.task, data: processData(context.input.task, context.input.input) },
                context.current!.output,
                context.current!.diagnostics,
              ),
            },
          }),
        onDone: {
          target: 'reviewed',
          actions: [
            { type: 'countUsage', params: ({ event }) => ({ result: event.output }) },
            { type: 'recordReview', params: ({ event }) => ({ result: event.output }) },
          ],
        },
      },
    },
    reviewed: {
      always: [
        { guard: 'approved', target: 'done' },
        { guard: 'revisionsLeft', target: 'processGate', actions: 'nextPass' },
        { target: 'exhausted', actions: 'noteExhausted' },
      ],
    },
    ...finalStates('done', 'exhausted', 'budgetExceeded', 'failed'),
  },
  output: ({ context }) => ({
    status: context.status,
    ...(context.reason ? { reason: context.reason } : {}),
    output: lastOutput(context.revisions)?.output,
    approved: context.status === 'done',
    passes: context.revisions.length,
    revisions: context.revisions,
    usage: context.usage,
  }),
});
