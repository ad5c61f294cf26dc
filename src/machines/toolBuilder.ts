import { assign, setup, spawnChild, stopChild } from 'xstate';
import { ToolSpecSchema, type ToolSpec } from '../contracts/toolSpec.js';
import { addUsage, zeroUsage, type Usage } from '../contracts/usage.js';
import type { Code, ToolEntry } from '../contracts/answers.js';
import type { ToolCheckSubject, WriteToolInput, WriteToolOutput } from '../contracts/deterministicActors.js';
import { answerOf, budgetCheck, notProvided, remainingBudget, type Budget, type FlowOutputBase, type FlowStatus, finalStates } from './common.js';
import { feedbackLoopMachine, type FeedbackLoopOutput } from './feedbackLoop.js';
import { metacognitiveMachine, type MetacognitiveOutput } from './metacognitive.js';
import { parallelMachine, type ParallelOutput } from './parallel.js';
import { progressiveMachine, type ProgressiveOutput } from './progressive.js';
import { reentrantMachine, type ReentrantOutput } from './reentrant.js';
import { ReviewAnswerSchema, WAIT_TIMEOUT, waitTimerNotProvided, type PersonOption, type ReviewAnswer, type WaitDeclaration } from './waits.js';
import {
  analysisTasks,
  entryTask,
  moduleSpecialistSystem,
  moduleTask,
  moduleVerifyTask,
  toolReviewTask,
  type Analysis,
} from './toolBuilderPrompts.js';

export interface ToolBuilderInput {
  /** Prefix of every microtask key of this flow: the flow id. */
  key: string;
  /** Validated again here: an invalid spec fails the flow before any model call. */
  spec: ToolSpec;
  /** The tool is written to `<outRoot>/<spec.name>/` and nowhere else. */
  outRoot: string;
  /** Quality a module must reach (verifier score, 0..1). */
  threshold?: number;
  /** Feedback-loop iterations per module. */
  maxIterations?: number;
  /** Revisions of the entry point after its first version. */
  maxRevisions?: number;
  /** Attempts of the metacognitive steps. */
  maxAttempts?: number;
  /** Timeout of each microtask. */
  timeoutMs?: number;
  budget?: Budget;
  /**
   * A person approves the integrated tool before it is written: the flow waits in
   * `awaitingApproval` for a `review` ({approved, feedback}); rejected, or unanswered past
   * `timeoutMs`, the tool is not written (status exhausted; its code is in the output).
   */
  approval?: PersonOption;
}

export type { ToolCheckSubject, WriteToolInput, WriteToolOutput };

export interface ModuleRecord {
  name: string;
  code: string | undefined;
  /** passed: reached the threshold (in the feedback loop or by progressive improvement). */
  passed: boolean;
  score: number | null;
  /** How it was made: the feedback loop, or the progressive level that passed. */
  via: 'feedback-loop' | 'code-only' | 'general' | 'specialized' | 'metacognitive' | 'best-effort';
  iterations: number;
  note?: string;
}

export interface ToolBuilderOutput extends FlowOutputBase {
  name: string;
  /** Where the tool was written; unset when it was not. */
  dir?: string;
  files: string[];
  analysis: Analysis | undefined;
  modules: ModuleRecord[];
  entry: ToolEntry | undefined;
  /** Whether the entry point was approved by review, and after how many passes. */
  integration: { approved: boolean; passes: number; recovered: boolean } | undefined;
  /** Checks that could not run where the tool was built, and why: the tool was judged without them. */
  notRun?: string[];
  /** A person's answer, when the input asked for approval before writing. */
  approval?: ReviewAnswer;
}

export interface ToolBuilderContext {
  input: ToolBuilderInput;
  spec: ToolSpec;
  analysis: Analysis | undefined;
  moduleIndex: number;
  modules: ModuleRecord[];
  /** The feedback loop's output for the module being improved. */
  pending: FeedbackLoopOutput | undefined;
  entry: ToolEntry | undefined;
  integration: ToolBuilderOutput['integration'];
  /** What review and checks said of the last entry point, for the recovery step. */
  integrationProblems: string[];
  written: WriteToolOutput | undefined;
  /** A person's answer when the input asked for approval. */
  approval?: ReviewAnswer;
  usage: Usage;
  status: FlowStatus;
  reason: string | undefined;
}

const defaults = { threshold: 0.8, maxIterations: 3, maxRevisions: 2, maxAttempts: 2 };
const setting = <K extends keyof typeof defaults>(input: ToolBuilderInput, key: K): number => input[key] ?? defaults[key];

const codeOf = (value: unknown): string | undefined =>
  value && typeof value === 'object' && typeof (value as Code).code === 'string' ? (value as Code).code : undefined;
const entryOf = (value: unknown): ToolEntry | undefined =>
  value && typeof value === 'object' && typeof (value as ToolEntry).entry === 'string' && typeof (value as ToolEntry).readme === 'string'
    ? (value as ToolEntry)
    : undefined;

const currentModule = (context: ToolBuilderContext) => context.spec.modules[context.moduleIndex]!;
const moduleKey = (context: ToolBuilderContext) => `${context.input.key}/module/${currentModule(context).name}`;
/**
 * The child actors' ids, names a person knows (the journal, progress and the inspector show
 * them): `analysis`, `module:auth` (its feedback loop), `module:auth:improve` (progressive
 * improvement), `integration`, `recovery`. Each module's children have ids of their own, so
 * each module's microtasks sit under it alone. Snapshots name children by id: changing
 * these makes older snapshots unsafe to resume (bump the pattern's machine version).
 */
export const toolBuilderChildIds = {
  analysis: 'analysis',
  module: (name: string) => `module:${name}`,
  improve: (name: string) => `module:${name}:improve`,
  integration: 'integration',
  recovery: 'recovery',
} as const;
const loopId = (context: ToolBuilderContext) => toolBuilderChildIds.module(currentModule(context).name);
const improveId = (context: ToolBuilderContext) => toolBuilderChildIds.improve(currentModule(context).name);
const moduleCode = (context: ToolBuilderContext): Record<string, string> =>
  Object.fromEntries(context.modules.filter((m) => m.code !== undefined).map((m) => [m.name, m.code!]));
/** The output of a spawned child's done event (wildcard handlers type it as unknown). */
const loopOutput = (event: { type: string }) => (event as { output?: unknown }).output as FeedbackLoopOutput;
const improvedOutput = (event: { type: string }) => (event as { output?: unknown }).output as ProgressiveOutput;
const textOf = (value: unknown): string => (typeof value === 'string' ? value : JSON.stringify(value));

/**
 * Builds a real tool from a spec, composing the patterns: a parallel analysis (problem,
 * architecture, code/AI split) → each module through a feedback loop, with deterministic
 * checks before any review → progressive improvement of a module that falls short →
 * re-entrant integration of the entry point and README, checked as a whole (type-check,
 * `--help` runs) → metacognitive recovery when integration fails → the files written.
 */
export const toolBuilderMachine = setup({
  types: {
    input: {} as ToolBuilderInput,
    context: {} as ToolBuilderContext,
    output: {} as ToolBuilderOutput,
  },
  actors: {
    parallel: parallelMachine,
    feedbackLoop: feedbackLoopMachine,
    progressive: progressiveMachine,
    reentrant: reentrantMachine,
    metacognitive: metacognitiveMachine,
    writeTool: notProvided<WriteToolOutput, WriteToolInput>('writeTool'),
    waitTimer: waitTimerNotProvided(),
  },
  guards: {
    specValid: ({ context }) => ToolSpecSchema.safeParse(context.input.spec).success,
    overBudget: (_, params: { status: FlowStatus }) => params.status === 'budget_exceeded',
    loopPassed: (_, params: { output: FeedbackLoopOutput }) => params.output.status === 'done',
    improved: (_, params: { output: ProgressiveOutput }) => params.output.status === 'done',
    allModulesPassed: ({ context }) => context.modules.every((m) => m.passed),
    approvalAsked: ({ context }) => context.input.approval !== undefined,
    approvedByPerson: (_, params: { answer: ReviewAnswer }) => params.answer.approved,
    moreModules: ({ context }) => context.moduleIndex + 1 < context.spec.modules.length,
    // A done event of a child that is not the one this state waits for (none is expected).
    otherChild: (_, params: { actorId: string; expected: string }) => params.actorId !== params.expected,
    integrated: (_, params: { output: ReentrantOutput }) => params.output.status === 'done' && params.output.approved,
    recovered: (_, params: { output: MetacognitiveOutput }) =>
      params.output.status === 'done' && entryOf(params.output.result) !== undefined,
  },
  actions: {
    rejectSpec: assign(({ context }) => {
      const parsed = ToolSpecSchema.safeParse(context.input.spec);
      const issues = parsed.success
        ? []
        : parsed.error.issues.map((i) => `${i.path.length ? i.path.join('.') : '(spec)'}: ${i.message}`);
      return { reason: `invalid tool spec: ${issues.join('; ')}` };
    }),
    countUsage: assign(({ context }, params: { usage: Usage }) => ({ usage: addUsage(context.usage, params.usage) })),
    noteChildReason: assign((_, params: { reason: string | undefined }) => ({ reason: params.reason })),
    // A child sees only what was left of the budget; the reason names the flow's own.
    noteBudget: assign(({ context }, params: { childReason: string | undefined }) => {
      const check = budgetCheck(context.input.budget, context.usage);
      return { reason: check.ok ? params.childReason : check.reason };
    }),
    recordAnalysis: assign((_, params: { output: ParallelOutput }) => {
      // An analysis that failed leaves its fallback text: the modules can still be written.
      const [problem, architecture, split] = params.output.results.map((r) =>
        r ? textOf(answerOf(r)) : 'not analyzed (budget)',
      );
      return { analysis: { problem: problem ?? '', architecture: architecture ?? '', split: split ?? '' } };
    }),
    recordLoopModule: assign(({ context }, params: { output: FeedbackLoopOutput }) => ({
      modules: [
        ...context.modules,
        {
          name: currentModule(context).name,
          code: codeOf(params.output.result),
          passed: true,
          score: params.output.score,
          via: 'feedback-loop' as const,
          iterations: params.output.iterations,
        },
      ],
    })),
    holdForImprovement: assign((_, params: { output: FeedbackLoopOutput }) => ({ pending: params.output })),
    recordImprovedModule: assign(({ context }, params: { output: ProgressiveOutput }) => {
      const loop = context.pending!;
      const passed = params.output.status === 'done';
      const improvedCode = codeOf(params.output.result);
      // Progressive improvement that produced nothing better leaves the loop's best attempt.
      const code = improvedCode ?? codeOf(loop.result);
      const via = passed && params.output.level !== null ? (['code-only', 'general', 'specialized', 'metacognitive'] as const)[params.output.level]! : 'best-effort';
      return {
        pending: undefined,
        modules: [
          ...context.modules,
          {
            name: currentModule(context).name,
            code,
            passed,
            score: params.output.score ?? loop.score,
            via,
            iterations: loop.iterations,
            ...(passed ? {} : { note: params.output.reason ?? loop.reason ?? 'did not reach the threshold' }),
          },
        ],
      };
    }),
    nextModule: assign(({ context }) => ({ moduleIndex: context.moduleIndex + 1 })),
    recordIntegration: assign((_, params: { output: ReentrantOutput }) => {
      const last = params.output.revisions[params.output.revisions.length - 1];
      return {
        entry: entryOf(params.output.output),
        integration: { approved: params.output.approved, passes: params.output.passes, recovered: false },
        integrationProblems: [
          ...(last?.diagnostics ?? []),
          ...(last?.review && !last.review.approved && last.review.feedback ? [last.review.feedback] : []),
          ...(last?.error ? [last.error] : []),
        ],
      };
    }),
    recordRecovery: assign(({ context }, params: { output: MetacognitiveOutput }) => ({
      entry: entryOf(params.output.result) ?? context.entry,
      integration: { ...context.integration!, recovered: params.output.status === 'done' },
    })),
    recordWritten: assign((_, params: { written: WriteToolOutput }) => ({ written: params.written })),
    recordApproval: assign((_, params: { answer: ReviewAnswer }) => ({ approval: params.answer })),
    noteRejected: assign((_, params: { answer: ReviewAnswer }) => ({
      reason: `not written: a person rejected the tool${params.answer.feedback ? ` (${params.answer.feedback})` : ''}`,
    })),
    noteApprovalTimeout: assign(({ context }) => ({
      reason: `not written: no person approved the tool within ${context.input.approval?.maxWaitMs} ms`,
    })),
    noteWriteError: assign((_, params: { error: unknown }) => ({
      reason: `the tool could not be written: ${params.error instanceof Error ? params.error.message : String(params.error)}`,
    })),
    noteShortModules: assign(({ context }) => {
      const short = context.modules.filter((m) => !m.passed);
      return short.length
        ? { reason: `written, but ${short.map((m) => `${m.name} (best score ${m.score ?? 'none'})`).join(', ')} did not reach the threshold ${setting(context.input, 'threshold')}` }
        : {};
    }),
    setStatus: assign((_, params: { status: FlowStatus }) => ({ status: params.status })),
    startModuleLoop: spawnChild('feedbackLoop', {
      id: ({ context }) => loopId(context),
      input: ({ context }) => ({
        key: moduleKey(context),
        task: moduleTask(context.spec, currentModule(context), context.analysis!, context.input.timeoutMs),
        verify: moduleVerifyTask(context.spec, currentModule(context), context.input.timeoutMs),
        threshold: setting(context.input, 'threshold'),
        maxIterations: setting(context.input, 'maxIterations'),
        check: true,
        checkSubject: { kind: 'module', spec: context.spec, module: currentModule(context).name } satisfies ToolCheckSubject,
        budget: remainingBudget(context.input.budget, context.usage),
      }),
    }),
    // A finished child stays in the snapshot until stopped (a second copy of its output).
    stopModuleLoop: stopChild(({ context }) => loopId(context)),
    startImprovement: spawnChild('progressive', {
      id: ({ context }) => improveId(context),
      input: ({ context }) => {
        const module = currentModule(context);
        const loop = context.pending!;
        const task = moduleTask(context.spec, module, context.analysis!, context.input.timeoutMs);
        return {
          key: `${moduleKey(context)}/improve`,
          // The loop's best attempt and what was said of it: level 0 repairs it by code,
          // the higher levels start from it.
          task: {
            ...task,
            data: {
              ...(task.data as object),
              candidate: loop.result,
              lastFeedback: loop.history.filter((a) => a.feedback).map((a) => a.feedback).slice(-1)[0] ?? '',
              lastDiagnostics: loop.history[loop.history.length - 1]?.diagnostics ?? [],
            },
          },
          verify: moduleVerifyTask(context.spec, module, context.input.timeoutMs),
          threshold: setting(context.input, 'threshold'),
          specialist: { system: moduleSpecialistSystem(context.spec, module) },
          maxAttempts: setting(context.input, 'maxAttempts'),
          check: true,
          checkSubject: { kind: 'module', spec: context.spec, module: module.name } satisfies ToolCheckSubject,
          budget: remainingBudget(context.input.budget, context.usage),
        };
      },
    }),
    stopImprovement: stopChild(({ context }) => improveId(context)),
  },
}).createMachine({
  id: 'toolBuilder',
  context: ({ input }) => ({
    input,
    spec: input.spec,
    analysis: undefined,
    moduleIndex: 0,
    modules: [],
    pending: undefined,
    entry: undefined,
    integration: undefined,
    integrationProblems: [],
    written: undefined,
    usage: zeroUsage(),
    status: 'failed',
    reason: undefined,
  }),
  initial: 'validating',
  states: {
    validating: {
      always: [{ guard: 'specValid', target: 'analyzing' }, { target: 'failed', actions: 'rejectSpec' }],
    },
    analyzing: {
      invoke: {
        id: toolBuilderChildIds.analysis,
        src: 'parallel',
        input: ({ context }) => ({
          key: `${context.input.key}/analysis`,
          tasks: analysisTasks(context.spec, context.input.timeoutMs),
          concurrency: 3,
          budget: remainingBudget(context.input.budget, context.usage),
        }),
        onDone: [
          {
            guard: { type: 'overBudget', params: ({ event }) => ({ status: event.output.status }) },
            target: 'budgetExceeded',
            actions: [
              { type: 'countUsage', params: ({ event }) => ({ usage: event.output.usage }) },
              { type: 'noteBudget', params: ({ event }) => ({ childReason: event.output.reason }) },
            ],
          },
          {
            target: 'generatingModule',
            actions: [
              { type: 'countUsage', params: ({ event }) => ({ usage: event.output.usage }) },
              { type: 'recordAnalysis', params: ({ event }) => ({ output: event.output }) },
            ],
          },
        ],
      },
    },
    // A module's feedback loop and its improvement are spawned, not invoked: an invoke's id
    // is fixed in the definition, so every module's loop had one id
    // (`0.toolBuilder.generatingModule`) and all their microtasks sat under it.
    generatingModule: {
      entry: 'startModuleLoop',
      exit: 'stopModuleLoop',
      on: {
        'xstate.done.actor.*': [
          { guard: { type: 'otherChild', params: ({ context, event }) => ({ actorId: event.actorId, expected: loopId(context) }) } },
          {
            guard: { type: 'overBudget', params: ({ event }) => ({ status: loopOutput(event).status }) },
            target: 'budgetExceeded',
            actions: [
              { type: 'countUsage', params: ({ event }) => ({ usage: loopOutput(event).usage }) },
              { type: 'noteBudget', params: ({ event }) => ({ childReason: loopOutput(event).reason }) },
            ],
          },
          {
            guard: { type: 'loopPassed', params: ({ event }) => ({ output: loopOutput(event) }) },
            target: 'moduleDone',
            actions: [
              { type: 'countUsage', params: ({ event }) => ({ usage: loopOutput(event).usage }) },
              { type: 'recordLoopModule', params: ({ event }) => ({ output: loopOutput(event) }) },
            ],
          },
          {
            target: 'improvingModule',
            actions: [
              { type: 'countUsage', params: ({ event }) => ({ usage: loopOutput(event).usage }) },
              { type: 'holdForImprovement', params: ({ event }) => ({ output: loopOutput(event) }) },
            ],
          },
        ],
      },
    },
    improvingModule: {
      entry: 'startImprovement',
      exit: 'stopImprovement',
      on: {
        'xstate.done.actor.*': [
          { guard: { type: 'otherChild', params: ({ context, event }) => ({ actorId: event.actorId, expected: improveId(context) }) } },
          {
            guard: { type: 'overBudget', params: ({ event }) => ({ status: improvedOutput(event).status }) },
            target: 'budgetExceeded',
            actions: [
              { type: 'countUsage', params: ({ event }) => ({ usage: improvedOutput(event).usage }) },
              { type: 'recordImprovedModule', params: ({ event }) => ({ output: improvedOutput(event) }) },
              { type: 'noteBudget', params: ({ event }) => ({ childReason: improvedOutput(event).reason }) },
            ],
          },
          {
            target: 'moduleDone',
            actions: [
              { type: 'countUsage', params: ({ event }) => ({ usage: improvedOutput(event).usage }) },
              { type: 'recordImprovedModule', params: ({ event }) => ({ output: improvedOutput(event) }) },
            ],
          },
        ],
      },
    },
    moduleDone: {
      always: [{ guard: 'moreModules', target: 'generatingModule', actions: 'nextModule' }, { target: 'integrating' }],
    },
    integrating: {
      invoke: {
        id: toolBuilderChildIds.integration,
        src: 'reentrant',
        input: ({ context }) => ({
          key: `${context.input.key}/integrate`,
          task: entryTask(
            context.spec,
            context.analysis!,
            context.modules.map((m) => ({ name: m.name, purpose: currentPurpose(context.spec, m.name), code: m.code ?? '' })),
            context.input.timeoutMs,
          ),
          review: toolReviewTask(context.spec, context.input.timeoutMs),
          input: { modules: context.spec.modules.map((m) => m.name) },
          maxRevisions: setting(context.input, 'maxRevisions'),
          check: true,
          checkSubject: { kind: 'tool', spec: context.spec, modules: moduleCode(context) } satisfies ToolCheckSubject,
          budget: remainingBudget(context.input.budget, context.usage),
        }),
        onDone: [
          {
            guard: { type: 'integrated', params: ({ event }) => ({ output: event.output }) },
            target: 'approvalGate',
            actions: [
              { type: 'countUsage', params: ({ event }) => ({ usage: event.output.usage }) },
              { type: 'recordIntegration', params: ({ event }) => ({ output: event.output }) },
            ],
          },
          {
            guard: { type: 'overBudget', params: ({ event }) => ({ status: event.output.status }) },
            target: 'budgetExceeded',
            actions: [
              { type: 'countUsage', params: ({ event }) => ({ usage: event.output.usage }) },
              { type: 'recordIntegration', params: ({ event }) => ({ output: event.output }) },
              { type: 'noteBudget', params: ({ event }) => ({ childReason: event.output.reason }) },
            ],
          },
          {
            target: 'recovering',
            actions: [
              { type: 'countUsage', params: ({ event }) => ({ usage: event.output.usage }) },
              { type: 'recordIntegration', params: ({ event }) => ({ output: event.output }) },
            ],
          },
        ],
      },
    },
    recovering: {
      invoke: {
        id: toolBuilderChildIds.recovery,
        src: 'metacognitive',
        input: ({ context }) => {
          const task = entryTask(
            context.spec,
            context.analysis!,
            context.modules.map((m) => ({ name: m.name, purpose: currentPurpose(context.spec, m.name), code: m.code ?? '' })),
            context.input.timeoutMs,
          );
          return {
            key: `${context.input.key}/recover`,
            task: {
              ...task,
              data: { ...(task.data as object), previousAttempt: context.entry, problems: context.integrationProblems },
            },
            maxAttempts: setting(context.input, 'maxAttempts'),
            check: true,
            checkSubject: { kind: 'tool', spec: context.spec, modules: moduleCode(context) } satisfies ToolCheckSubject,
            budget: remainingBudget(context.input.budget, context.usage),
          };
        },
        onDone: [
          {
            guard: { type: 'recovered', params: ({ event }) => ({ output: event.output }) },
            target: 'approvalGate',
            actions: [
              { type: 'countUsage', params: ({ event }) => ({ usage: event.output.usage }) },
              { type: 'recordRecovery', params: ({ event }) => ({ output: event.output }) },
            ],
          },
          {
            guard: { type: 'overBudget', params: ({ event }) => ({ status: event.output.status }) },
            target: 'budgetExceeded',
            actions: [
              { type: 'countUsage', params: ({ event }) => ({ usage: event.output.usage }) },
              { type: 'recordRecovery', params: ({ event }) => ({ output: event.output }) },
              { type: 'noteBudget', params: ({ event }) => ({ childReason: event.output.reason }) },
            ],
          },
          {
            target: 'failed',
            actions: [
              { type: 'countUsage', params: ({ event }) => ({ usage: event.output.usage }) },
              { type: 'recordRecovery', params: ({ event }) => ({ output: event.output }) },
              {
                type: 'noteChildReason',
                params: ({ event }) => ({
                  reason: `integration failed and recovery did not fix it: ${event.output.reason ?? event.output.status}`,
                }),
              },
            ],
          },
        ],
      },
    },
    approvalGate: {
      always: [{ guard: 'approvalAsked', target: 'awaitingApproval' }, { target: 'writing' }],
    },
    awaitingApproval: {
      meta: { wait: { for: "a person's approval of the integrated tool before it is written", events: { review: ReviewAnswerSchema } } satisfies WaitDeclaration },
      invoke: { src: 'waitTimer', id: 'waitTimer', input: ({ context }) => ({ timeoutMs: context.input.approval?.maxWaitMs }) },
      on: {
        review: [
          {
            guard: { type: 'approvedByPerson', params: ({ event }) => ({ answer: (event as unknown as { data: ReviewAnswer }).data }) },
            target: 'writing',
            actions: { type: 'recordApproval', params: ({ event }) => ({ answer: (event as unknown as { data: ReviewAnswer }).data }) },
          },
          {
            target: 'exhausted',
            actions: [
              { type: 'recordApproval', params: ({ event }) => ({ answer: (event as unknown as { data: ReviewAnswer }).data }) },
              { type: 'noteRejected', params: ({ event }) => ({ answer: (event as unknown as { data: ReviewAnswer }).data }) },
            ],
          },
        ],
        [WAIT_TIMEOUT]: { target: 'exhausted', actions: 'noteApprovalTimeout' },
      },
    },
    writing: {
      invoke: {
        src: 'writeTool',
        input: ({ context }) => ({
          outRoot: context.input.outRoot,
          spec: context.spec,
          modules: moduleCode(context),
          entry: context.entry!,
        }),
        onDone: { target: 'written', actions: { type: 'recordWritten', params: ({ event }) => ({ written: event.output }) } },
        onError: { target: 'failed', actions: { type: 'noteWriteError', params: ({ event }) => ({ error: event.error }) } },
      },
    },
    written: {
      always: [
        { guard: 'allModulesPassed', target: 'done' },
        { target: 'exhausted', actions: 'noteShortModules' },
      ],
    },
    ...finalStates('done', 'exhausted', 'budgetExceeded', 'failed'),
  },
  output: ({ context }) => ({
    status: context.status,
    ...(context.reason ? { reason: context.reason } : {}),
    usage: context.usage,
    name: context.spec?.name,
    ...(context.written ? { dir: context.written.dir } : {}),
    files: context.written?.files ?? [],
    analysis: context.analysis,
    modules: context.modules,
    entry: context.entry,
    integration: context.integration,
    ...(context.written?.notRun?.length ? { notRun: context.written.notRun } : {}),
    ...(context.approval ? { approval: context.approval } : {}),
  }),
});

function currentPurpose(spec: ToolSpec, name: string): string {
  return spec.modules.find((m) => m.name === name)?.purpose ?? '';
}
