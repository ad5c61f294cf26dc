import { assign, setup } from 'xstate';
import type { MicrotaskErrorKind, MicrotaskResult } from '../contracts/microtask.js';
import { addUsage, zeroUsage, type Usage } from '../contracts/usage.js';
import type { FailureAnalysis } from '../contracts/answers.js';
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

export interface MetacognitiveInput {
  /** Prefix of every microtask key of this flow (flow id + path). */
  key: string;
  /** What to do. */
  task: TaskSpec;
  /** How to ask for the failure analysis; the defaults below fit most tasks. */
  analyze?: { system?: string; prompt?: string; timeoutMs?: number };
  /** Attempts at most, the first one included. */
  maxAttempts: number;
  /**
   * When the failure analysis itself fails (its call failed, or its answer was not an
   * analysis): `retry` runs the next attempt as the last one ran, with no new adjustments
   * (the lessons of earlier analyses stay), while attempts remain, as the seed does;
   * `fail` ends the flow, saying why. Default `retry`.
   */
  onAnalysisFailure?: 'retry' | 'fail';
  /** Run the deterministic `check` actor on each answer; a failed check is a failed attempt. */
  check?: boolean;
  /** Given to the check with each output: what the output is for. */
  checkSubject?: unknown;
  budget?: Budget;
}

/**
 * What an attempt ran with, on top of the task: every analysis so far, summed. Prompt
 * additions accumulate (a lesson learned stays learned); timeout and model are replaced
 * by the latest analysis that names one.
 */
export interface AppliedAdjustments {
  promptAdditions: string[];
  timeoutMs?: number;
  model?: string;
}

/** The essentials of a microtask's envelope, as an attempt records them. */
export interface AttemptEnvelope {
  success: boolean;
  result?: unknown;
  error?: { kind: MicrotaskErrorKind; message: string };
  fallback?: unknown;
  durationMs: number;
  model?: string;
  cached: boolean;
  usage: Usage;
}

export interface MetacognitiveAttempt {
  attempt: number;
  key: string;
  adjustments: AppliedAdjustments;
  envelope: AttemptEnvelope;
  /** null when no check ran (check off, or the microtask failed). */
  checkOk: boolean | null;
  diagnostics: string[];
  /** The analysis of this attempt's failure, when one was made. */
  analysis?: FailureAnalysis;
  /** Why the analysis itself failed. */
  analysisError?: string;
}

export interface MetacognitiveOutput extends FlowOutputBase {
  /**
   * The successful answer; otherwise the last attempt's fallback, or its answer when only
   * the check rejected it (the status and that attempt's diagnostics say so).
   */
  result: unknown;
  attempts: MetacognitiveAttempt[];
}

export interface MetacognitiveContext {
  input: MetacognitiveInput;
  attempt: number;
  /** What the next attempt runs with. */
  adjustments: AppliedAdjustments;
  attempts: MetacognitiveAttempt[];
  usage: Usage;
  reason: string | undefined;
  status: FlowStatus;
}

export const DEFAULT_ANALYZE_SYSTEM =
  'You analyze why an AI microtask failed and decide whether a changed attempt can succeed. ' +
  'Only three things about the next attempt can change: instructions added to its system prompt, ' +
  'a longer timeout, another model. Recommend a retry only when such a change addresses the root cause ' +
  '(a transient error such as a rate limit or an unavailable service may be retried unchanged). ' +
  'Say stop when the task cannot succeed this way, and why.';

export const DEFAULT_ANALYZE_PROMPT =
  'The data holds the task, the attempt that just failed (its error or the problems automatic checks found in its answer) ' +
  'and every attempt so far with the adjustments it ran with. Find the root cause, decide whether to retry, ' +
  'and give the adjustments for the next attempt. Do not repeat an adjustment that already failed.';

/** Where the prompt additions go in the system prompt: a heading the model cannot miss. */
export const ADJUSTMENTS_HEADING = '## Lessons from earlier failed attempts (follow them)';

const last = <T>(list: readonly T[]): T | undefined => list[list.length - 1];

export const attemptsText = (n: number): string => `${n} attempt${n === 1 ? '' : 's'}`;

/** The task as the next attempt runs it: the adjustments really applied. */
export function adjustedTask(task: TaskSpec, adjustments: AppliedAdjustments): TaskSpec {
  const additions = adjustments.promptAdditions;
  return {
    ...task,
    ...(additions.length
      ? { system: `${task.system}\n\n${ADJUSTMENTS_HEADING}\n${additions.map((a) => `- ${a}`).join('\n')}` }
      : {}),
    ...(adjustments.timeoutMs !== undefined ? { timeoutMs: adjustments.timeoutMs } : {}),
    ...(adjustments.model !== undefined ? { model: adjustments.model } : {}),
  };
}

/** The adjustments after one more analysis: additions summed (without repeats), timeout and model replaced. */
export function accumulate(applied: AppliedAdjustments, next: FailureAnalysis['adjustments']): AppliedAdjustments {
  const promptAdditions = [...applied.promptAdditions];
  for (const addition of next.promptAdditions ?? []) {
    if (addition.trim() && !promptAdditions.includes(addition)) promptAdditions.push(addition);
  }
  const timeoutMs = next.timeoutMs ?? applied.timeoutMs;
  const model = next.model ?? applied.model;
  return {
    promptAdditions,
    ...(timeoutMs !== undefined ? { timeoutMs } : {}),
    ...(model !== undefined ? { model } : {}),
  };
}

const essentials = (result: MicrotaskResult): AttemptEnvelope => ({
  success: result.success,
  ...(result.success ? { result: result.result } : {}),
  ...(result.error ? { error: { kind: result.error.kind, message: result.error.message } } : {}),
  ...(result.success ? {} : { fallback: result.fallback }),
  durationMs: result.durationMs,
  ...(result.model !== undefined ? { model: result.model } : {}),
  cached: result.cached,
  usage: result.usage,
});

/** What went wrong with an attempt, in one line. */
export function attemptFailure(attempt: MetacognitiveAttempt): string {
  if (!attempt.envelope.success) {
    return `the microtask failed (${attempt.envelope.error?.kind ?? 'failed'}: ${attempt.envelope.error?.message ?? 'no message'})`;
  }
  return `the check rejected the answer: ${attempt.diagnostics.join('; ') || 'no diagnostics'}`;
}

const updateLast = (attempts: readonly MetacognitiveAttempt[], patch: Partial<MetacognitiveAttempt>): MetacognitiveAttempt[] =>
  attempts.map((a, i) => (i === attempts.length - 1 ? { ...a, ...patch } : a));

/** An attempt as the analyst sees it: no usage or timings, the answer only when a check judged it. */
const shownAttempt = (a: MetacognitiveAttempt) => ({
  attempt: a.attempt,
  adjustments: a.adjustments,
  ...(a.envelope.error ? { error: a.envelope.error } : {}),
  ...(a.checkOk === false ? { output: a.envelope.result, checkDiagnostics: a.diagnostics } : {}),
  ...(a.analysis ? { analysis: a.analysis } : {}),
});

/**
 * Run → (check) → done; on a failure, a failure analysis decides: retry with its
 * adjustments really applied to the next attempt (system prompt, timeout, model), or stop
 * with its reason. An analysis that fails decides nothing: the next attempt runs unchanged
 * (or the flow fails, with `onAnalysisFailure: 'fail'`). No analysis is asked for when no
 * attempt is left to follow it.
 */
export const metacognitiveMachine = setup({
  types: {
    input: {} as MetacognitiveInput,
    context: {} as MetacognitiveContext,
    output: {} as MetacognitiveOutput,
  },
  actors: { microtask: microtaskNotProvided(), check: checkNotProvided() },
  guards: {
    withinBudget: ({ context }) => budgetCheck(context.input.budget, context.usage).ok,
    succeeded: (_, params: { result: MicrotaskResult }) => params.result.success,
    checkEnabled: ({ context }) => context.input.check === true,
    checkPassed: (_, params: { check: CheckResult }) => params.check.ok,
    attemptsLeft: ({ context }) => context.attempt + 1 < context.input.maxAttempts,
    analysisSaysRetry: ({ context }) => last(context.attempts)?.analysis?.retry === true,
    // No attempt-left check here: an analysis is only asked for when an attempt is left.
    retryWithoutAnalysis: ({ context }) => context.input.onAnalysisFailure !== 'fail',
  },
  actions: {
    countUsage: assign(({ context }, params: { result: MicrotaskResult }) => ({
      usage: addUsage(context.usage, params.result.usage),
    })),
    recordAttempt: assign(({ context }, params: { result: MicrotaskResult }) => ({
      attempts: [
        ...context.attempts,
        {
          attempt: context.attempt,
          key: params.result.key,
          adjustments: context.adjustments,
          envelope: essentials(params.result),
          checkOk: null,
          diagnostics: [],
        },
      ],
    })),
    recordCheck: assign(({ context }, params: { check: CheckResult }) => ({
      attempts: updateLast(context.attempts, { checkOk: params.check.ok, diagnostics: params.check.diagnostics }),
    })),
    recordCheckError: assign(({ context }, params: { error: unknown }) => ({
      attempts: updateLast(context.attempts, {
        checkOk: false,
        diagnostics: [checkCrashed(params.error)],
      }),
    })),
    recordAnalysis: assign(({ context }, params: { result: MicrotaskResult }) => ({
      attempts: updateLast(
        context.attempts,
        params.result.success
          ? { analysis: params.result.result as FailureAnalysis }
          : { analysisError: describeFailure(params.result) },
      ),
    })),
    applyAdjustments: assign(({ context }) => ({
      adjustments: accumulate(context.adjustments, last(context.attempts)!.analysis!.adjustments),
      attempt: context.attempt + 1,
    })),
    nextAttempt: assign(({ context }) => ({ attempt: context.attempt + 1 })),
    setStatus: assign((_, params: { status: FlowStatus }) => ({ status: params.status })),
    noteBudget: assign(({ context }) => {
      const check = budgetCheck(context.input.budget, context.usage);
      return { reason: check.ok ? undefined : check.reason };
    }),
    noteExhausted: assign(({ context }) => ({
      reason: `no attempt succeeded in ${attemptsText(context.input.maxAttempts)}; in the last one ${attemptFailure(last(context.attempts)!)}`,
    })),
    noteStop: assign(({ context }) => ({ reason: last(context.attempts)!.analysis!.reason })),
    noteAnalysisFailed: assign(({ context }) => {
      const attempt = last(context.attempts)!;
      return { reason: `the failure analysis failed (${attempt.analysisError}) after ${attemptFailure(attempt)}` };
    }),
  },
}).createMachine({
  id: 'metacognitive',
  context: ({ input }) => ({
    input,
    attempt: 0,
    adjustments: { promptAdditions: [] },
    attempts: [],
    usage: zeroUsage(),
    reason: undefined,
    status: 'failed',
  }),
  initial: 'budgetGate',
  states: {
    budgetGate: {
      always: [
        { guard: 'withinBudget', target: 'running' },
        { target: 'budgetExceeded', actions: 'noteBudget' },
      ],
    },
    running: {
      invoke: {
        src: 'microtask',
        input: ({ context }) =>
          microtaskInput(adjustedTask(context.input.task, context.adjustments), `${context.input.key}/run/${context.attempt}`),
        onDone: [
          {
            guard: { type: 'succeeded', params: ({ event }) => ({ result: event.output }) },
            target: 'ran',
            actions: [
              { type: 'countUsage', params: ({ event }) => ({ result: event.output }) },
              { type: 'recordAttempt', params: ({ event }) => ({ result: event.output }) },
            ],
          },
          {
            target: 'analyzeGate',
            actions: [
              { type: 'countUsage', params: ({ event }) => ({ result: event.output }) },
              { type: 'recordAttempt', params: ({ event }) => ({ result: event.output }) },
            ],
          },
        ],
      },
    },
    ran: {
      always: [{ guard: 'checkEnabled', target: 'checking' }, { target: 'done' }],
    },
    checking: {
      invoke: {
        src: 'check',
        input: ({ context }) => ({
          key: `${context.input.key}/check/${context.attempt}`,
          output: last(context.attempts)!.envelope.result,
          subject: context.input.checkSubject,
        }),
        onDone: [
          {
            guard: { type: 'checkPassed', params: ({ event }) => ({ check: event.output }) },
            target: 'done',
            actions: { type: 'recordCheck', params: ({ event }) => ({ check: event.output }) },
          },
          { target: 'analyzeGate', actions: { type: 'recordCheck', params: ({ event }) => ({ check: event.output }) } },
        ],
        onError: { target: 'analyzeGate', actions: { type: 'recordCheckError', params: ({ event }) => ({ error: event.error }) } },
      },
    },
    analyzeGate: {
      // An analysis costs a call; with no attempt left, its advice could not be followed.
      always: [
        { guard: { type: 'attemptsLeft' }, target: 'analyzeBudgetGate' },
        { target: 'exhausted', actions: 'noteExhausted' },
      ],
    },
    analyzeBudgetGate: {
      always: [
        { guard: 'withinBudget', target: 'analyzing' },
        { target: 'budgetExceeded', actions: 'noteBudget' },
      ],
    },
    analyzing: {
      invoke: {
        src: 'microtask',
        input: ({ context }) => {
          const { task, analyze, key, maxAttempts } = context.input;
          const failed = last(context.attempts)!;
          return microtaskInput(
            {
              taskType: 'failure-analysis',
              system: analyze?.system ?? DEFAULT_ANALYZE_SYSTEM,
              prompt: analyze?.prompt ?? DEFAULT_ANALYZE_PROMPT,
              ...(analyze?.timeoutMs !== undefined ? { timeoutMs: analyze.timeoutMs } : {}),
            },
            `${key}/analyze/${context.attempt}`,
            {
              answer: 'failureAnalysis',
              data: {
                task: adjustedTask(task, failed.adjustments),
                failed: { ...shownAttempt(failed), failure: attemptFailure(failed) },
                attemptsSoFar: context.attempts.map(shownAttempt),
                attemptsLeft: maxAttempts - context.attempt - 1,
              },
            },
          );
        },
        onDone: [
          {
            guard: { type: 'succeeded', params: ({ event }) => ({ result: event.output }) },
            target: 'analyzed',
            actions: [
              { type: 'countUsage', params: ({ event }) => ({ result: event.output }) },
              { type: 'recordAnalysis', params: ({ event }) => ({ result: event.output }) },
            ],
          },
          {
            guard: 'retryWithoutAnalysis',
            target: 'budgetGate',
            actions: [
              { type: 'countUsage', params: ({ event }) => ({ result: event.output }) },
              { type: 'recordAnalysis', params: ({ event }) => ({ result: event.output }) },
              'nextAttempt',
            ],
          },
          {
            target: 'failed',
            actions: [
              { type: 'countUsage', params: ({ event }) => ({ result: event.output }) },
              { type: 'recordAnalysis', params: ({ event }) => ({ result: event.output }) },
              'noteAnalysisFailed',
            ],
          },
        ],
      },
    },
    analyzed: {
      always: [
        { guard: 'analysisSaysRetry', target: 'budgetGate', actions: 'applyAdjustments' },
        { target: 'failed', actions: 'noteStop' },
      ],
    },
    ...finalStates('done', 'exhausted', 'budgetExceeded', 'failed'),
  },
  output: ({ context }) => {
    const final = last(context.attempts);
    const result = final === undefined ? undefined : final.envelope.success ? final.envelope.result : final.envelope.fallback;
    return {
      status: context.status,
      ...(context.reason ? { reason: context.reason } : {}),
      result,
      attempts: context.attempts,
      usage: context.usage,
    };
  },
});
