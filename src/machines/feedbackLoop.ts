import { assign, setup } from 'xstate';
import type { MicrotaskResult } from '../contracts/microtask.js';
import { addUsage, zeroUsage, type Usage } from '../contracts/usage.js';
import type { Verdict } from '../contracts/answers.js';
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
import { reviewData, revisionPrompt } from './prompts.js';
import { ScoreAnswerSchema, WAIT_TIMEOUT, waitTimerNotProvided, type PersonOption, type ScoreAnswer, type WaitDeclaration } from './waits.js';

export interface FeedbackLoopInput {
  /** Prefix of every microtask key of this flow (flow id + path). */
  key: string;
  /** What to generate. */
  task: TaskSpec;
  /** How the model judges an attempt; asked for a `verdict` ({score, feedback}). Unused when a person scores. */
  verify?: TaskSpec;
  /**
   * A person scores each attempt instead of the model: the flow waits in `awaitingScore`
   * for a `score` event ({score, feedback}); past `timeoutMs` it ends with the best so far.
   */
  personVerify?: PersonOption;
  /** Done when an attempt scores at least this (0..1). */
  threshold: number;
  /** Attempts at most, the first one included. */
  maxIterations: number;
  budget?: Budget;
  /** Run the deterministic `check` actor on each attempt before the verifier. */
  check?: boolean;
  /** Given to the check with each output: what the output is for. */
  checkSubject?: unknown;
}

export interface FeedbackAttempt {
  iteration: number;
  output: unknown;
  /** null when no verdict could be had (generation or verification failed). */
  score: number | null;
  feedback: string;
  diagnostics: string[];
  checkOk: boolean;
  error?: string;
  /** Set when a person gave the score. */
  by?: 'person';
}

export interface FeedbackLoopOutput extends FlowOutputBase {
  /** The best attempt's output: the highest score, the latest among equals. */
  result: unknown;
  score: number | null;
  iterations: number;
  history: FeedbackAttempt[];
}

export interface FeedbackLoopContext {
  input: FeedbackLoopInput;
  iteration: number;
  /** The attempt being checked and verified. */
  current: { output: unknown; diagnostics: string[]; checkOk: boolean } | undefined;
  history: FeedbackAttempt[];
  usage: Usage;
  reason: string | undefined;
  status: FlowStatus;
}

/**
 * An attempt that passed its checks beats one that did not; then the highest score; among
 * equals (and the unscored), the latest.
 */
export function bestAttempt(history: readonly FeedbackAttempt[]): FeedbackAttempt | undefined {
  const rank = (a: FeedbackAttempt) => [a.checkOk ? 1 : 0, a.score ?? -1] as const;
  let best: FeedbackAttempt | undefined;
  for (const attempt of history) {
    if (attempt.output === undefined) continue;
    const [ok, score] = rank(attempt);
    if (!best) {
      best = attempt;
      continue;
    }
    const [bestOk, bestScore] = rank(best);
    if (ok > bestOk || (ok === bestOk && score >= bestScore)) best = attempt;
  }
  return best;
}

const last = <T>(list: readonly T[]): T | undefined => list[list.length - 1];

/**
 * The attempt being judged, with its judgement (a score and feedback, or why there is
 * none), added to the history: the context update every way of judging ends with.
 */
const judged = (
  context: FeedbackLoopContext,
  judgement: { score?: number; feedback?: string; error?: string; by?: 'person' },
): Pick<FeedbackLoopContext, 'history' | 'current'> => ({
  history: [
    ...context.history,
    {
      iteration: context.iteration,
      output: context.current!.output,
      score: judgement.score ?? null,
      feedback: judgement.feedback ?? '',
      diagnostics: context.current!.diagnostics,
      checkOk: context.current!.checkOk,
      ...(judgement.error ? { error: judgement.error } : {}),
      ...(judgement.by ? { by: judgement.by } : {}),
    },
  ],
  current: undefined,
});

/**
 * Generate → (check) → verify → done when the verdict's score reaches the threshold;
 * otherwise revise, with the last attempt and its feedback, until `maxIterations`; then
 * the best attempt, with the whole history.
 */
export const feedbackLoopMachine = setup({
  types: {
    input: {} as FeedbackLoopInput,
    context: {} as FeedbackLoopContext,
    output: {} as FeedbackLoopOutput,
    events: {} as { type: 'score'; data: ScoreAnswer; eventId?: string } | { type: typeof WAIT_TIMEOUT },
  },
  actors: { microtask: microtaskNotProvided(), check: checkNotProvided(), waitTimer: waitTimerNotProvided() },
  guards: {
    personScores: ({ context }) => context.input.personVerify !== undefined,
    withinBudget: ({ context }) => budgetCheck(context.input.budget, context.usage).ok,
    generated: (_, params: { result: MicrotaskResult }) => params.result.success,
    checkEnabled: ({ context }) => context.input.check === true,
    passed: ({ context }) => {
      const attempt = last(context.history);
      return !!attempt && attempt.checkOk && attempt.score !== null && attempt.score >= context.input.threshold;
    },
    iterationsLeft: ({ context }) => context.iteration + 1 < context.input.maxIterations,
    hasOutput: ({ context }) => bestAttempt(context.history) !== undefined,
  },
  actions: {
    countUsage: assign(({ context }, params: { result: MicrotaskResult }) => ({
      usage: addUsage(context.usage, params.result.usage),
    })),
    holdAttempt: assign((_, params: { result: MicrotaskResult }) => ({
      current: { output: params.result.result, diagnostics: [], checkOk: true },
    })),
    recordGenerationFailure: assign(({ context }, params: { result: MicrotaskResult }) => ({
      history: [
        ...context.history,
        {
          iteration: context.iteration,
          output: undefined,
          score: null,
          feedback: '',
          diagnostics: [],
          checkOk: false,
          error: `generation ${describeFailure(params.result)}`,
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
    recordVerdict: assign(({ context }, params: { result: MicrotaskResult }) => {
      const verdict = params.result.success ? (params.result.result as Verdict) : undefined;
      return judged(context, verdict ? { score: verdict.score, feedback: verdict.feedback } : { error: `verification ${describeFailure(params.result)}` });
    }),
    recordPersonScore: assign(({ context }, params: { answer: ScoreAnswer }) =>
      judged(context, { score: params.answer.score, feedback: params.answer.feedback, by: 'person' }),
    ),
    recordScoreTimeout: assign(({ context }) => ({
      ...judged(context, { error: `not scored: no person answered within ${context.input.personVerify?.maxWaitMs} ms` }),
      reason: `no person scored attempt ${context.iteration + 1} within ${context.input.personVerify?.maxWaitMs} ms; the best attempt so far is returned`,
    })),
    recordUnverified: assign(({ context }) => judged(context, { error: 'not verified: the budget was spent' })),
    setStatus: assign((_, params: { status: FlowStatus }) => ({ status: params.status })),
    nextIteration: assign(({ context }) => ({ iteration: context.iteration + 1 })),
    noteBudget: assign(({ context }) => {
      const check = budgetCheck(context.input.budget, context.usage);
      return { reason: check.ok ? undefined : check.reason };
    }),
    noteExhausted: assign(({ context }) => ({
      reason: `no attempt reached the threshold ${context.input.threshold} in ${context.input.maxIterations} iterations`,
    })),
    noteNoOutput: assign(({ context }) => ({
      reason: `no attempt produced an output: ${last(context.history)?.error ?? 'unknown'}`,
    })),
  },
}).createMachine({
  id: 'feedbackLoop',
  context: ({ input }) => ({
    input,
    iteration: 0,
    current: undefined,
    history: [],
    usage: zeroUsage(),
    reason: undefined,
    status: 'failed',
  }),
  initial: 'budgetGate',
  states: {
    generating: {
      invoke: {
        src: 'microtask',
        input: ({ context }) => {
          const previous = last(context.history.filter((a) => a.output !== undefined));
          return microtaskInput(
            context.input.task,
            `${context.input.key}/generate/${context.iteration}`,
            previous ? { prompt: revisionPrompt(context.input.task, previous) } : {},
          );
        },
        onDone: [
          {
            guard: { type: 'generated', params: ({ event }) => ({ result: event.output }) },
            target: 'generated',
            actions: [
              { type: 'countUsage', params: ({ event }) => ({ result: event.output }) },
              { type: 'holdAttempt', params: ({ event }) => ({ result: event.output }) },
            ],
          },
          {
            target: 'nextOrStop',
            actions: [
              { type: 'countUsage', params: ({ event }) => ({ result: event.output }) },
              { type: 'recordGenerationFailure', params: ({ event }) => ({ result: event.output }) },
            ],
          },
        ],
      },
    },
    generated: {
      always: [{ guard: 'checkEnabled', target: 'checking' }, { target: 'verifyGate' }],
    },
    checking: {
      invoke: {
        src: 'check',
        input: ({ context }) => ({
          key: `${context.input.key}/check/${context.iteration}`,
          output: context.current!.output,
          subject: context.input.checkSubject,
        }),
        onDone: { target: 'verifyGate', actions: { type: 'recordCheck', params: ({ event }) => ({ check: event.output }) } },
        onError: { target: 'verifyGate', actions: { type: 'recordCheckError', params: ({ event }) => ({ error: event.error }) } },
      },
    },
    verifyGate: {
      always: [
        { guard: 'personScores', target: 'awaitingScore' },
        { guard: 'withinBudget', target: 'verifying' },
        { target: 'budgetExceeded', actions: ['recordUnverified', 'noteBudget'] },
      ],
    },
    awaitingScore: {
      meta: { wait: { for: "a person's score of the latest attempt", events: { score: ScoreAnswerSchema } } satisfies WaitDeclaration },
      invoke: { src: 'waitTimer', id: 'waitTimer', input: ({ context }) => ({ timeoutMs: context.input.personVerify?.maxWaitMs }) },
      on: {
        score: { target: 'judged', actions: { type: 'recordPersonScore', params: ({ event }) => ({ answer: event.data }) } },
        [WAIT_TIMEOUT]: { target: 'exhausted', actions: 'recordScoreTimeout' },
      },
    },
    verifying: {
      invoke: {
        src: 'microtask',
        input: ({ context }) =>
          microtaskInput(context.input.verify!, `${context.input.key}/verify/${context.iteration}`, {
            answer: 'verdict',
            data: {
              ...(context.input.verify!.data === undefined ? {} : { context: context.input.verify!.data }),
              ...reviewData(context.input.task, context.current!.output, context.current!.diagnostics),
            },
          }),
        onDone: {
          target: 'judged',
          actions: [
            { type: 'countUsage', params: ({ event }) => ({ result: event.output }) },
            { type: 'recordVerdict', params: ({ event }) => ({ result: event.output }) },
          ],
        },
      },
    },
    judged: {
      always: [{ guard: 'passed', target: 'done' }, { target: 'nextOrStop' }],
    },
    nextOrStop: {
      always: [
        { guard: { type: 'iterationsLeft' }, target: 'budgetGate', actions: 'nextIteration' },
        { guard: 'hasOutput', target: 'exhausted', actions: 'noteExhausted' },
        { target: 'failed', actions: 'noteNoOutput' },
      ],
    },
    budgetGate: {
      always: [
        { guard: 'withinBudget', target: 'generating' },
        { target: 'budgetExceeded', actions: 'noteBudget' },
      ],
    },
    ...finalStates('done', 'exhausted', 'budgetExceeded', 'failed'),
  },
  output: ({ context }) => {
    const best = bestAttempt(context.history);
    return {
      status: context.status,
      ...(context.reason ? { reason: context.reason } : {}),
      result: best?.output,
      score: best?.score ?? null,
      iterations: context.history.length,
      history: context.history,
      usage: context.usage,
    };
  },
});
