import { assign, setup } from 'xstate';
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

/** What became of one item. JSON-safe: a rerun gets these back as `previous.results`. */
export interface ItemRecord {
  index: number;
  status: 'done' | 'failed' | 'pending';
  /** The microtask's answer, when done. */
  result?: unknown;
  /** Why it failed, when failed. */
  error?: string;
  /** Numbered from 1; part of the item's microtask key, so a retry is a new key. */
  attempt: number;
  /** Done in an earlier run and kept as it was: no model call in this one. */
  fromPrevious?: boolean;
}

export interface IncrementalInput {
  /** Prefix of every microtask key of this flow (flow id + path). */
  key: string;
  items: unknown[];
  /** Run once per item; its data becomes `{ context: task.data, item, index }`. */
  task: TaskSpec;
  /** The results of an earlier run over the same items: done ones are kept, failed ones retried. */
  previous?: { results: ItemRecord[] };
  budget?: Budget;
}

/**
 * Counts that never overlap: `done` in this run, `skipped` because done in an earlier one,
 * `failed`; the rest of `total` is still pending.
 */
export interface IncrementalProgress {
  done: number;
  failed: number;
  skipped: number;
  total: number;
}

export interface IncrementalOutput extends FlowOutputBase {
  /** One record per item, in item order. */
  results: ItemRecord[];
  progress: IncrementalProgress;
}

export interface IncrementalContext {
  input: IncrementalInput;
  results: ItemRecord[];
  /** The item being processed. */
  current: number | undefined;
  progress: IncrementalProgress;
  usage: Usage;
  reason: string | undefined;
  status: FlowStatus;
}

function progressOf(results: readonly ItemRecord[]): IncrementalProgress {
  const progress = { done: 0, failed: 0, skipped: 0, total: results.length };
  for (const record of results) {
    if (record.status === 'failed') progress.failed++;
    else if (record.status === 'done') progress[record.fromPrevious ? 'skipped' : 'done']++;
  }
  return progress;
}

/**
 * Where each item starts: done before stays done (and is never asked for again); failed
 * before gets the next attempt, so its key is new and a stored failure is not served
 * again; never started keeps its attempt, whose key no model has answered yet.
 */
function initialRecords(input: IncrementalInput): ItemRecord[] {
  const previous = new Map((input.previous?.results ?? []).map((record) => [record.index, record]));
  return input.items.map((_, index): ItemRecord => {
    const before = previous.get(index);
    if (before?.status === 'done') {
      return {
        index,
        status: 'done',
        ...(before.result !== undefined ? { result: before.result } : {}),
        attempt: before.attempt,
        fromPrevious: true,
      };
    }
    if (before?.status === 'failed') return { index, status: 'pending', attempt: before.attempt + 1 };
    return { index, status: 'pending', attempt: before?.attempt ?? 1 };
  });
}

const nextPending = (results: readonly ItemRecord[]): number => results.findIndex((r) => r.status === 'pending');

/**
 * Items one at a time, one microtask each. Each item's record is assigned in the same
 * transition that receives its result, so the snapshot persisted after it is the
 * checkpoint: a crash loses at most the item in flight, and that one's result is found
 * under its key when it runs again.
 */
export const incrementalMachine = setup({
  types: {
    input: {} as IncrementalInput,
    context: {} as IncrementalContext,
    output: {} as IncrementalOutput,
  },
  actors: { microtask: microtaskNotProvided() },
  guards: {
    allProcessed: ({ context }) => nextPending(context.results) === -1,
    withinBudget: ({ context }) => budgetCheck(context.input.budget, context.usage).ok,
    anyFailed: ({ context }) => context.progress.failed > 0,
  },
  actions: {
    pickNext: assign(({ context }) => ({ current: nextPending(context.results) })),
    recordResult: assign(({ context }, params: { result: MicrotaskResult }) => {
      const index = context.current!;
      const attempt = context.results[index]!.attempt;
      const record: ItemRecord = params.result.success
        ? { index, status: 'done', result: params.result.result, attempt }
        : { index, status: 'failed', error: describeFailure(params.result), attempt };
      const results = context.results.map((r) => (r.index === index ? record : r));
      return {
        results,
        progress: progressOf(results),
        usage: addUsage(context.usage, params.result.usage),
        current: undefined,
      };
    }),
    recordThrown: assign(({ context }, params: { error: unknown }) => {
      // The actor only throws when it could not run at all (not provided, transport down).
      const index = context.current!;
      const record: ItemRecord = {
        index,
        status: 'failed',
        error: `unknown: ${errorInfo(params.error).message}`,
        attempt: context.results[index]!.attempt,
      };
      const results = context.results.map((r) => (r.index === index ? record : r));
      return { results, progress: progressOf(results), current: undefined };
    }),
    setStatus: assign((_, params: { status: FlowStatus }) => ({ status: params.status })),
    noteBudget: assign(({ context }) => {
      const check = budgetCheck(context.input.budget, context.usage);
      const pending = context.results.filter((r) => r.status === 'pending').length;
      const failed = context.progress.failed ? `, ${context.progress.failed} failed` : '';
      return {
        reason: check.ok
          ? undefined
          : `${check.reason}; ${pending} of ${context.results.length} items left pending${failed} (a rerun with these results as \`previous\` goes on)`,
      };
    }),
    noteFailures: assign(({ context }) => ({
      reason:
        `${context.progress.failed} of ${context.progress.total} items failed; ` +
        'a rerun with these results as `previous` retries them and keeps the done ones',
    })),
  },
}).createMachine({
  id: 'incremental',
  context: ({ input }) => {
    const results = initialRecords(input);
    return {
      input,
      results,
      current: undefined,
      progress: progressOf(results),
      usage: zeroUsage(),
      reason: undefined,
      status: 'failed',
    };
  },
  initial: 'nextItem',
  states: {
    nextItem: {
      always: [
        { guard: 'allProcessed', target: 'finished' },
        { guard: 'withinBudget', target: 'processing', actions: 'pickNext' },
        { target: 'budgetExceeded', actions: 'noteBudget' },
      ],
    },
    processing: {
      invoke: {
        src: 'microtask',
        input: ({ context }) => {
          const index = context.current!;
          const { task, key } = context.input;
          return microtaskInput(task, `${key}/item/${index}/${context.results[index]!.attempt}`, {
            data: { ...(task.data !== undefined ? { context: task.data } : {}), item: context.input.items[index], index },
          });
        },
        onDone: { target: 'nextItem', actions: { type: 'recordResult', params: ({ event }) => ({ result: event.output }) } },
        onError: { target: 'nextItem', actions: { type: 'recordThrown', params: ({ event }) => ({ error: event.error }) } },
      },
    },
    finished: {
      always: [{ guard: 'anyFailed', target: 'failed', actions: 'noteFailures' }, { target: 'done' }],
    },
    ...finalStates('done', 'budgetExceeded', 'failed'),
  },
  output: ({ context }) => ({
    status: context.status,
    ...(context.reason ? { reason: context.reason } : {}),
    usage: context.usage,
    results: context.results,
    progress: context.progress,
  }),
});
