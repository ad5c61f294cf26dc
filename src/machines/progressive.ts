import { assign, not, setup } from 'xstate';
import type { MicrotaskResult } from '../contracts/microtask.js';
import { addUsage, zeroUsage, type Usage } from '../contracts/usage.js';
import type { Verdict } from '../contracts/answers.js';
import type { CodeOnlyInput, CodeOnlyOutput } from '../contracts/deterministicActors.js';
import {
  budgetCheck,
  checkCrashed,
  checkNotProvided,
  describeFailure,
  errorInfo,
  microtaskInput,
  microtaskNotProvided,
  notProvided,
  remainingBudget,
  type Budget,
  type CheckResult,
  type FlowOutputBase,
  type FlowStatus,
  type TaskSpec,
  finalStates,
} from './common.js';
import { attemptsText, metacognitiveMachine, type MetacognitiveInput, type MetacognitiveOutput } from './metacognitive.js';
import { reviewData, showOutput } from './prompts.js';

export type Level = 0 | 1 | 2 | 3;

export interface ProgressiveInput {
  /** Prefix of every microtask key of this flow (flow id + path). */
  key: string;
  /** What to do. */
  task: TaskSpec;
  /** How to measure a level's output; asked for a `verdict` ({score, feedback}). */
  verify: TaskSpec;
  /** A level passes when its output scores at least this (0..1). */
  threshold: number;
  /** Level 2 and 3 run the task with this system prompt. */
  specialist: { system: string };
  /** Attempts of level 3 (the metacognitive flow); 2 when unset. */
  maxAttempts?: number;
  /** Run the deterministic `check` actor on each level's output before the verifier. */
  check?: boolean;
  /** Given to the check with each output: what the output is for. */
  checkSubject?: unknown;
  /** Skip the levels below (when the caller knows they cannot do it). */
  startLevel?: Level;
  budget?: Budget;
}

export type { CodeOnlyInput, CodeOnlyOutput };
export const codeOnlyNotProvided = () => notProvided<CodeOnlyOutput, CodeOnlyInput>('codeOnly');

export const levelNames = ['code-only', 'general', 'specialized', 'metacognitive'] as const;
export type LevelName = (typeof levelNames)[number];

export interface LevelReport {
  level: number;
  name: LevelName;
  /** Unset when the level produced nothing. */
  output?: unknown;
  /** The verifier's score; null when the level was not verified. */
  score: number | null;
  feedback: string;
  diagnostics: string[];
  passed: boolean;
  /** Why the level failed. */
  reason?: string;
}

export interface ProgressiveOutput extends FlowOutputBase {
  /** The level that passed; null when none did. */
  level: number | null;
  /** The passing level's output; otherwise the best-scored one. */
  result: unknown;
  score: number | null;
  levels: LevelReport[];
}

export interface ProgressiveContext {
  input: ProgressiveInput;
  level: Level;
  /** The output of the level being checked and verified. */
  current: { output: unknown; diagnostics: string[] } | undefined;
  levels: LevelReport[];
  usage: Usage;
  reason: string | undefined;
  status: FlowStatus;
}

const last = <T>(list: readonly T[]): T | undefined => list[list.length - 1];

/** The highest score wins; among equals (and the unscored), the later, more specialized level. */
export function bestLevel(levels: readonly LevelReport[]): LevelReport | undefined {
  let best: LevelReport | undefined;
  for (const report of levels) {
    if (report.output === undefined) continue;
    if (!best || (report.score ?? -1) >= (best.score ?? -1)) best = report;
  }
  return best;
}

/**
 * The prompt of a specialized level: the task, and what every lower level answered and
 * what was wrong with it, so the specialist does not repeat their mistakes.
 */
export function escalationPrompt(task: TaskSpec, lower: readonly LevelReport[]): string {
  const tried = lower.filter((report) => report.output !== undefined);
  if (!tried.length) return task.prompt;
  const shown = tried.map((report) => {
    const scored = report.score === null ? '' : ` (it scored ${report.score.toFixed(2)})`;
    return (
      `<attempt level="${report.level}" approach="${report.name}">\n${showOutput(report.output)}\n</attempt>${scored}` +
      (report.feedback ? `\nFeedback on it:\n<feedback>\n${report.feedback}\n</feedback>` : '') +
      (report.diagnostics.length ? `\nAutomatic checks found these problems:\n${report.diagnostics.map((d) => `- ${d}`).join('\n')}` : '')
    );
  });
  return (
    `${task.prompt}\n\nSimpler approaches were tried first and fell short:\n\n${shown.join('\n\n')}` +
    '\n\nGive a complete answer that avoids every problem above (not a list of changes).'
  );
}

/** The task of levels 2 and 3: the specialist's system prompt, and the lower levels' feedback. */
export const specialistTask = (context: Pick<ProgressiveContext, 'input' | 'levels'>): TaskSpec => ({
  ...context.input.task,
  system: context.input.specialist.system,
  prompt: escalationPrompt(context.input.task, context.levels),
});

const report = (context: ProgressiveContext, fields: Omit<LevelReport, 'level' | 'name'>): LevelReport => ({
  level: context.level,
  name: levelNames[context.level],
  ...fields,
});

/**
 * Level 0 code-only → 1 general → 2 specialized → 3 metacognitive: each level's output is
 * checked (optionally), then measured by a verifier; the flow stops at the first level
 * whose score reaches the threshold. Quality comes only from the verifier.
 */
export const progressiveMachine = setup({
  types: {
    input: {} as ProgressiveInput,
    context: {} as ProgressiveContext,
    output: {} as ProgressiveOutput,
  },
  actors: {
    microtask: microtaskNotProvided(),
    check: checkNotProvided(),
    codeOnly: codeOnlyNotProvided(),
    metacognitive: metacognitiveMachine,
  },
  guards: {
    withinBudget: ({ context }) => budgetCheck(context.input.budget, context.usage).ok,
    atLevel: ({ context }, params: { level: Level }) => context.level === params.level,
    solved: (_, params: { solution: CodeOnlyOutput }) => params.solution.output !== undefined,
    succeeded: (_, params: { result: MicrotaskResult }) => params.result.success,
    childDone: (_, params: { child: MetacognitiveOutput }) => params.child.status === 'done',
    childOverBudget: (_, params: { child: MetacognitiveOutput }) => params.child.status === 'budget_exceeded',
    // Level 3's child ran the same check on its answer already: a `done` child passed it.
    checkThisLevel: ({ context }) => context.input.check === true && context.level !== 3,
    checkPassed: (_, params: { check: CheckResult }) => params.check.ok,
    passed: ({ context }) => last(context.levels)?.passed === true,
    levelsLeft: ({ context }) => context.level < 3,
    hasOutput: ({ context }) => bestLevel(context.levels) !== undefined,
  },
  actions: {
    countUsage: assign(({ context }, params: { usage: Usage }) => ({ usage: addUsage(context.usage, params.usage) })),
    holdOutput: assign((_, params: { output: unknown; diagnostics?: string[] }) => ({
      current: { output: params.output, diagnostics: params.diagnostics ?? [] },
    })),
    recordNoOutput: assign(({ context }, params: { reason: string }) => ({
      levels: [...context.levels, report(context, { score: null, feedback: '', diagnostics: [], passed: false, reason: params.reason })],
    })),
    recordCheckFailure: assign(({ context }, params: { diagnostics: string[] }) => ({
      levels: [
        ...context.levels,
        report(context, {
          output: context.current!.output,
          score: null,
          feedback: '',
          diagnostics: params.diagnostics,
          passed: false,
          reason: 'the check rejected the output (not sent to the verifier)',
        }),
      ],
      current: undefined,
    })),
    recordVerdict: assign(({ context }, params: { result: MicrotaskResult }) => {
      const verdict = params.result.success ? (params.result.result as Verdict) : undefined;
      const passed = verdict !== undefined && verdict.score >= context.input.threshold;
      const reason = !verdict
        ? `verification ${describeFailure(params.result)}`
        : passed
          ? undefined
          : `scored ${verdict.score.toFixed(2)}, below the threshold ${context.input.threshold}`;
      return {
        levels: [
          ...context.levels,
          report(context, {
            output: context.current!.output,
            score: verdict ? verdict.score : null,
            feedback: verdict ? verdict.feedback : '',
            diagnostics: context.current!.diagnostics,
            passed,
            ...(reason ? { reason } : {}),
          }),
        ],
        current: undefined,
      };
    }),
    recordUnverified: assign(({ context }) => ({
      levels: [
        ...context.levels,
        report(context, {
          output: context.current!.output,
          score: null,
          feedback: '',
          diagnostics: context.current!.diagnostics,
          passed: false,
          reason: 'not verified: the budget was spent',
        }),
      ],
      current: undefined,
    })),
    setStatus: assign((_, params: { status: FlowStatus }) => ({ status: params.status })),
    escalateLevel: assign(({ context }) => ({ level: (context.level + 1) as Level })),
    noteBudget: assign(({ context }) => {
      const check = budgetCheck(context.input.budget, context.usage);
      return { reason: check.ok ? undefined : check.reason };
    }),
    noteChildBudget: assign((_, params: { child: MetacognitiveOutput }) => ({ reason: `level 3: ${params.child.reason}` })),
    noteExhausted: assign(({ context }) => ({
      reason: `no level reached the threshold ${context.input.threshold}`,
    })),
    noteNoOutput: assign(({ context }) => ({
      reason: `no level produced an output: ${context.levels.map((l) => `level ${l.level}: ${l.reason}`).join('; ')}`,
    })),
  },
}).createMachine({
  id: 'progressive',
  context: ({ input }) => ({
    input,
    level: input.startLevel ?? 0,
    current: undefined,
    levels: [],
    usage: zeroUsage(),
    reason: undefined,
    status: 'failed',
  }),
  initial: 'escalate',
  states: {
    escalate: {
      always: [
        { guard: { type: 'atLevel', params: { level: 0 } }, target: 'codeOnly' },
        // Every level above 0 starts with a model call.
        { guard: not('withinBudget'), target: 'budgetExceeded', actions: 'noteBudget' },
        { guard: { type: 'atLevel', params: { level: 1 } }, target: 'general' },
        { guard: { type: 'atLevel', params: { level: 2 } }, target: 'specialized' },
        { target: 'metacognitive' },
      ],
    },
    codeOnly: {
      invoke: {
        src: 'codeOnly',
        input: ({ context }) => ({ key: `${context.input.key}/level0/code`, task: context.input.task }),
        onDone: [
          {
            guard: { type: 'solved', params: ({ event }) => ({ solution: event.output }) },
            target: 'produced',
            actions: { type: 'holdOutput', params: ({ event }) => ({ output: event.output.output }) },
          },
          {
            target: 'nextLevel',
            actions: {
              type: 'recordNoOutput',
              params: ({ event }) => ({ reason: `no code-only solution: ${event.output.reason ?? 'none given'}` }),
            },
          },
        ],
        onError: {
          target: 'nextLevel',
          actions: {
            type: 'recordNoOutput',
            params: ({ event }) => ({ reason: `the code-only solver failed: ${errorInfo(event.error).message}` }),
          },
        },
      },
    },
    general: {
      invoke: {
        src: 'microtask',
        input: ({ context }) => microtaskInput(context.input.task, `${context.input.key}/level1/run`),
        onDone: [
          {
            guard: { type: 'succeeded', params: ({ event }) => ({ result: event.output }) },
            target: 'produced',
            actions: [
              { type: 'countUsage', params: ({ event }) => ({ usage: event.output.usage }) },
              { type: 'holdOutput', params: ({ event }) => ({ output: event.output.result }) },
            ],
          },
          {
            target: 'nextLevel',
            actions: [
              { type: 'countUsage', params: ({ event }) => ({ usage: event.output.usage }) },
              { type: 'recordNoOutput', params: ({ event }) => ({ reason: `the microtask ${describeFailure(event.output)}` }) },
            ],
          },
        ],
      },
    },
    specialized: {
      invoke: {
        src: 'microtask',
        input: ({ context }) => microtaskInput(specialistTask(context), `${context.input.key}/level2/run`),
        onDone: [
          {
            guard: { type: 'succeeded', params: ({ event }) => ({ result: event.output }) },
            target: 'produced',
            actions: [
              { type: 'countUsage', params: ({ event }) => ({ usage: event.output.usage }) },
              { type: 'holdOutput', params: ({ event }) => ({ output: event.output.result }) },
            ],
          },
          {
            target: 'nextLevel',
            actions: [
              { type: 'countUsage', params: ({ event }) => ({ usage: event.output.usage }) },
              { type: 'recordNoOutput', params: ({ event }) => ({ reason: `the microtask ${describeFailure(event.output)}` }) },
            ],
          },
        ],
      },
    },
    metacognitive: {
      invoke: {
        src: 'metacognitive',
        input: ({ context }): MetacognitiveInput => {
          const budget = remainingBudget(context.input.budget, context.usage);
          return {
            key: `${context.input.key}/level3`,
            task: specialistTask(context),
            maxAttempts: context.input.maxAttempts ?? 2,
            ...(context.input.check !== undefined ? { check: context.input.check } : {}),
            ...(context.input.checkSubject !== undefined ? { checkSubject: context.input.checkSubject } : {}),
            ...(budget ? { budget } : {}),
          };
        },
        onDone: [
          {
            guard: { type: 'childDone', params: ({ event }) => ({ child: event.output }) },
            target: 'produced',
            actions: [
              { type: 'countUsage', params: ({ event }) => ({ usage: event.output.usage }) },
              {
                type: 'holdOutput',
                params: ({ event }) => ({
                  output: event.output.result,
                  diagnostics: last(event.output.attempts)?.diagnostics ?? [],
                }),
              },
            ],
          },
          {
            guard: { type: 'childOverBudget', params: ({ event }) => ({ child: event.output }) },
            target: 'budgetExceeded',
            actions: [
              { type: 'countUsage', params: ({ event }) => ({ usage: event.output.usage }) },
              { type: 'recordNoOutput', params: ({ event }) => ({ reason: `the metacognitive flow ran out of budget: ${event.output.reason}` }) },
              { type: 'noteChildBudget', params: ({ event }) => ({ child: event.output }) },
            ],
          },
          {
            target: 'nextLevel',
            actions: [
              { type: 'countUsage', params: ({ event }) => ({ usage: event.output.usage }) },
              {
                type: 'recordNoOutput',
                params: ({ event }) => ({
                  reason: `the metacognitive flow ended ${event.output.status} after ${attemptsText(event.output.attempts.length)}: ${event.output.reason ?? 'no reason given'}`,
                }),
              },
            ],
          },
        ],
        onError: {
          target: 'nextLevel',
          actions: {
            type: 'recordNoOutput',
            params: ({ event }) => ({ reason: `the metacognitive flow crashed: ${errorInfo(event.error).message}` }),
          },
        },
      },
    },
    produced: {
      always: [{ guard: 'checkThisLevel', target: 'checking' }, { target: 'verifyGate' }],
    },
    checking: {
      invoke: {
        src: 'check',
        input: ({ context }) => ({
          key: `${context.input.key}/level${context.level}/check`,
          output: context.current!.output,
          subject: context.input.checkSubject,
        }),
        onDone: [
          {
            guard: { type: 'checkPassed', params: ({ event }) => ({ check: event.output }) },
            target: 'verifyGate',
            actions: {
              type: 'holdOutput',
              params: ({ context, event }) => ({ output: context.current!.output, diagnostics: event.output.diagnostics }),
            },
          },
          {
            target: 'nextLevel',
            actions: { type: 'recordCheckFailure', params: ({ event }) => ({ diagnostics: event.output.diagnostics }) },
          },
        ],
        onError: {
          target: 'nextLevel',
          actions: {
            type: 'recordCheckFailure',
            params: ({ event }) => ({ diagnostics: [checkCrashed(event.error)] }),
          },
        },
      },
    },
    verifyGate: {
      always: [
        { guard: 'withinBudget', target: 'verifying' },
        { target: 'budgetExceeded', actions: ['recordUnverified', 'noteBudget'] },
      ],
    },
    verifying: {
      invoke: {
        src: 'microtask',
        input: ({ context }) =>
          microtaskInput(context.input.verify, `${context.input.key}/level${context.level}/verify`, {
            answer: 'verdict',
            data: {
              ...(context.input.verify.data === undefined ? {} : { context: context.input.verify.data }),
              // The verifier judges against what the caller asked, whatever the level's prompt added.
              ...reviewData(context.input.task, context.current!.output, context.current!.diagnostics),
            },
          }),
        onDone: {
          target: 'judged',
          actions: [
            { type: 'countUsage', params: ({ event }) => ({ usage: event.output.usage }) },
            { type: 'recordVerdict', params: ({ event }) => ({ result: event.output }) },
          ],
        },
      },
    },
    judged: {
      always: [{ guard: 'passed', target: 'done' }, { target: 'nextLevel' }],
    },
    nextLevel: {
      always: [
        { guard: 'levelsLeft', target: 'escalate', actions: 'escalateLevel' },
        { guard: 'hasOutput', target: 'exhausted', actions: 'noteExhausted' },
        { target: 'failed', actions: 'noteNoOutput' },
      ],
    },
    ...finalStates('done', 'exhausted', 'budgetExceeded', 'failed'),
  },
  output: ({ context }) => {
    const passed = context.status === 'done' ? last(context.levels) : undefined;
    const chosen = passed ?? bestLevel(context.levels);
    return {
      status: context.status,
      ...(context.reason ? { reason: context.reason } : {}),
      level: passed ? passed.level : null,
      result: chosen?.output,
      score: chosen?.score ?? null,
      levels: context.levels,
      usage: context.usage,
    };
  },
});
