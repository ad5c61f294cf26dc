import { and, assign, setup, spawnChild, stopChild } from 'xstate';
import type { MicrotaskResult } from '../contracts/microtask.js';
import { addUsage, zeroUsage, type Usage } from '../contracts/usage.js';
import {
  budgetCheck,
  describeFailure,
  errorInfo,
  microtaskInput,
  microtaskNotProvided,
  type Budget,
  type FlowOutputBase,
  type FlowStatus,
  type TaskSpec,
  finalStates,
} from './common.js';

export interface ParallelInput {
  /** Prefix of every microtask key of this flow (flow id + path). */
  key: string;
  /** Independent microtasks; task i runs under the key `${key}/task/${i}`. */
  tasks: TaskSpec[];
  /** At most this many in flight at once (K >= 1). */
  concurrency: number;
  budget?: Budget;
}

export interface ParallelOutput extends FlowOutputBase {
  /** In input order; null for a task never started because the budget stopped new starts. */
  results: (MicrotaskResult | null)[];
  succeeded: number;
  failed: number;
}

export interface ParallelContext {
  input: ParallelInput;
  results: (MicrotaskResult | null)[];
  /** Indices of the tasks whose actors (`task-${index}`) are running. */
  inFlight: number[];
  /** The next task to start. */
  nextIndex: number;
  /** No more starts: the budget would not allow them. */
  stopped: boolean;
  usage: Usage;
  reason: string | undefined;
  status: FlowStatus;
}

const childId = (index: number) => `task-${index}`;
const PREFIX = 'task-';
/** The task index of a child's done or error event, or -1 for an actor that is not a task. */
const indexOf = (actorId: string): number =>
  actorId.startsWith(PREFIX) && /^\d+$/.test(actorId.slice(PREFIX.length)) ? Number(actorId.slice(PREFIX.length)) : -1;

/** A concurrency below 1 would start nothing and wait forever. */
const slots = (input: ParallelInput) => Math.max(1, Math.floor(input.concurrency));

/**
 * Calls in flight are spent as far as the budget goes: their cost is only known when they
 * end, and a call that was started will be paid for.
 */
const budgetWithInFlight = (context: ParallelContext) =>
  budgetCheck(context.input.budget, { ...context.usage, calls: context.usage.calls + context.inFlight.length });

const counts = (results: readonly (MicrotaskResult | null)[]) => ({
  succeeded: results.filter((r) => r?.success === true).length,
  failed: results.filter((r) => r?.success === false).length,
});

/**
 * Fan out N microtasks, at most K at once, and gather their envelopes in input order.
 * Each task is a child spawned by the registered name `microtask` with the id `task-i`,
 * so a persisted snapshot names the logic of every child in flight and a restore runs
 * them again (their keys find any result already stored). A finished child is stopped,
 * so it leaves the snapshot, which would otherwise carry a second copy of every result.
 */
export const parallelMachine = setup({
  types: {
    input: {} as ParallelInput,
    context: {} as ParallelContext,
    output: {} as ParallelOutput,
  },
  actors: { microtask: microtaskNotProvided() },
  guards: {
    allSettled: ({ context }) =>
      context.inFlight.length === 0 && (context.stopped || context.nextIndex >= context.input.tasks.length),
    slotFree: ({ context }) =>
      !context.stopped && context.nextIndex < context.input.tasks.length && context.inFlight.length < slots(context.input),
    withinBudget: ({ context }) => budgetWithInFlight(context).ok,
    // Each task's outcome is counted once, whatever else reaches the flow.
    isInFlight: ({ context }, params: { actorId: string }) => context.inFlight.includes(indexOf(params.actorId)),
    stoppedByBudget: ({ context }) => context.stopped,
    allFailed: ({ context }) => context.input.tasks.length > 0 && counts(context.results).succeeded === 0,
  },
  actions: {
    startTask: spawnChild('microtask', {
      id: ({ context }) => childId(context.nextIndex),
      input: ({ context }) =>
        microtaskInput(context.input.tasks[context.nextIndex]!, `${context.input.key}/task/${context.nextIndex}`),
    }),
    markStarted: assign(({ context }) => ({
      inFlight: [...context.inFlight, context.nextIndex],
      nextIndex: context.nextIndex + 1,
    })),
    stopStarting: assign(({ context }) => {
      const check = budgetWithInFlight(context);
      const notStarted = context.input.tasks.length - context.nextIndex;
      return {
        stopped: true,
        reason: check.ok ? undefined : `${check.reason}; ${notStarted} of ${context.input.tasks.length} tasks not started`,
      };
    }),
    recordResult: assign(({ context }, params: { actorId: string; result: MicrotaskResult }) => {
      const index = indexOf(params.actorId);
      return {
        results: context.results.map((r, i) => (i === index ? params.result : r)),
        inFlight: context.inFlight.filter((i) => i !== index),
        usage: addUsage(context.usage, params.result.usage),
      };
    }),
    recordThrown: assign(({ context }, params: { actorId: string; error: unknown }) => {
      // The actor only throws when it could not run at all (not provided, transport down).
      const index = indexOf(params.actorId);
      const task = context.input.tasks[index]!;
      const thrown: MicrotaskResult = {
        success: false,
        taskType: task.taskType,
        key: `${context.input.key}/task/${index}`,
        error: { kind: 'unknown', message: errorInfo(params.error).message, retryable: false },
        durationMs: 0,
        usage: zeroUsage(),
        cached: false,
      };
      return {
        results: context.results.map((r, i) => (i === index ? thrown : r)),
        inFlight: context.inFlight.filter((i) => i !== index),
      };
    }),
    stopTask: stopChild((_, params: { actorId: string }) => params.actorId),
    setStatus: assign((_, params: { status: FlowStatus }) => ({ status: params.status })),
    noteAllFailed: assign(({ context }) => ({
      reason: `all ${context.input.tasks.length} tasks failed; the first: ${describeFailure(
        context.results.find((r): r is MicrotaskResult => r !== null)!,
      )}`,
    })),
    noteSomeFailed: assign(({ context }) => {
      const { failed } = counts(context.results);
      return { reason: failed ? `${failed} of ${context.input.tasks.length} tasks failed` : undefined };
    }),
  },
}).createMachine({
  id: 'parallel',
  context: ({ input }) => ({
    input,
    results: input.tasks.map(() => null),
    inFlight: [],
    nextIndex: 0,
    stopped: false,
    usage: zeroUsage(),
    reason: undefined,
    status: 'failed',
  }),
  initial: 'dispatching',
  states: {
    // Starts tasks while a slot is free; each start changes the context, so the eventless
    // transitions are taken again until no slot, no task or no budget is left.
    dispatching: {
      always: [
        { guard: 'allSettled', target: 'gathered' },
        { guard: and(['slotFree', 'withinBudget']), actions: ['startTask', 'markStarted'] },
        { guard: 'slotFree', actions: 'stopStarting' },
        { target: 'waiting' },
      ],
    },
    waiting: {
      on: {
        'xstate.done.actor.*': [
          {
            guard: { type: 'isInFlight', params: ({ event }) => ({ actorId: event.actorId }) },
            target: 'dispatching',
            actions: [
              { type: 'recordResult', params: ({ event }) => ({ actorId: event.actorId, result: event.output as MicrotaskResult }) },
              { type: 'stopTask', params: ({ event }) => ({ actorId: event.actorId }) },
            ],
          },
        ],
        'xstate.error.actor.*': [
          {
            guard: { type: 'isInFlight', params: ({ event }) => ({ actorId: event.actorId }) },
            target: 'dispatching',
            actions: [
              { type: 'recordThrown', params: ({ event }) => ({ actorId: event.actorId, error: event.error }) },
              { type: 'stopTask', params: ({ event }) => ({ actorId: event.actorId }) },
            ],
          },
          // An error event nothing handles would put the whole flow in error; one from an
          // actor that is no task in flight is not this flow's business.
          { actions: { type: 'stopTask', params: ({ event }) => ({ actorId: event.actorId }) } },
        ],
      },
    },
    gathered: {
      always: [
        { guard: 'stoppedByBudget', target: 'budgetExceeded' },
        { guard: 'allFailed', target: 'failed', actions: 'noteAllFailed' },
        { target: 'done', actions: 'noteSomeFailed' },
      ],
    },
    ...finalStates('done', 'budgetExceeded', 'failed'),
  },
  output: ({ context }) => ({
    status: context.status,
    ...(context.reason ? { reason: context.reason } : {}),
    usage: context.usage,
    results: context.results,
    ...counts(context.results),
  }),
});
