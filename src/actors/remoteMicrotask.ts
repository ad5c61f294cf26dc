import { fromPromise } from 'xstate';
import type { BusSubscription, KeyValueStore, WorkQueue } from '../bus/Bus.js';
import { resultKey } from '../bus/KvResultsStore.js';
import { silentLogger, type Logger } from '../log.js';
import { zeroUsage } from '../usage.js';
import { defaultFallback, isReusableResult, type Fallbacks } from './microtask.js';
import { MicrotaskResultSchema, type MicrotaskError, type MicrotaskInput, type MicrotaskResult } from './microtaskTypes.js';

export interface RemoteMicrotaskOptions {
  queue: WorkQueue;
  results: KeyValueStore;
  /**
   * How long past a task's deadline to wait for a worker's answer before giving up on
   * it (a worker may be starting, or the queue long): the flow then falls back.
   */
  graceMs?: number;
  /** The task types' fallbacks, for when no worker answers. */
  fallbacks?: Fallbacks;
  logger?: Logger;
}

/** What travels on the work queue: the microtask input with its absolute deadline. */
export type QueuedTask = MicrotaskInput & { deadlineAt: number };

/**
 * The microtask actor when microtasks run on workers: it enqueues the task (its
 * idempotency key as the message id, so a duplicate enqueue is dropped) and waits for
 * the worker's result in the results bucket. A result already there is returned
 * without enqueuing anything. The deadline is fixed at the first enqueue and carried
 * with the task, so time spent queued counts against it.
 */
export function createRemoteMicrotaskLogic(options: RemoteMicrotaskOptions) {
  const graceMs = options.graceMs ?? 5_000;
  const logger = options.logger ?? silentLogger;
  return fromPromise<MicrotaskResult, MicrotaskInput>(async ({ input, signal }) => {
    const started = performance.now();
    const key = resultKey(input.key);
    const task: QueuedTask = { ...input, deadlineAt: input.deadlineAt ?? Date.now() + (input.timeoutMs ?? 10_000) };
    const log = logger.child({ taskId: input.key, taskType: input.taskType });

    let subscription: BusSubscription | undefined;
    let timer: NodeJS.Timeout | undefined;
    try {
      return await new Promise<MicrotaskResult>((resolve) => {
        let finished = false;
        const finish = (result: MicrotaskResult) => {
          finished = true;
          resolve(result);
        };
        const failure = (error: MicrotaskError): MicrotaskResult => ({
          success: false,
          taskType: input.taskType,
          key: input.key,
          error,
          fallback: (options.fallbacks?.[input.taskType] ?? defaultFallback)(input, error),
          durationMs: performance.now() - started,
          usage: zeroUsage(),
          cached: false,
        });
        signal.addEventListener(
          'abort',
          () => finish(failure({ kind: 'cancelled', message: 'the flow stopped waiting for this task', retryable: false })),
          { once: true },
        );
        timer = setTimeout(
          () =>
            finish(
              failure({
                kind: 'timeout',
                message: `no worker answered within ${graceMs} ms after the task's deadline; is a worker running?`,
                retryable: true,
              }),
            ),
          Math.max(0, task.deadlineAt + graceMs - Date.now()),
        );
        // Watch first, then enqueue: a result written in between cannot be missed. The
        // watch starts with what is stored: a reusable result answers at once; a transient
        // failure from an earlier run does not, and its revision tells a new result apart.
        let initialRevision: number | undefined;
        options.results
          .watch(key, (entry) => {
            if (initialRevision === undefined) {
              initialRevision = entry?.revision ?? 0;
              const stored = entry && MicrotaskResultSchema.safeParse(safeJson(entry));
              if (stored?.success && isReusableResult(stored.data)) finish({ ...stored.data, cached: true, durationMs: 0 });
              return;
            }
            if (!entry || entry.revision <= initialRevision) return;
            const parsed = MicrotaskResultSchema.safeParse(safeJson(entry));
            if (parsed.success) finish(parsed.data);
          })
          .then(async (sub) => {
            if (finished) return sub.unsubscribe();
            subscription = sub;
            // A retry after a stored transient failure is a new job on purpose: its id names
            // the failure it follows, so the queue's duplicate window does not drop it.
            const jobId = initialRevision ? `${input.key}#${initialRevision}` : input.key;
            const { duplicate } = await options.queue.enqueue(jobId, JSON.stringify(task));
            log.debug({ duplicate, jobId }, 'task enqueued');
          })
          .catch((e: unknown) => {
            log.warn({ err: e }, 'could not enqueue the task');
            finish(failure({ kind: 'unavailable', message: `the bus failed: ${(e as Error).message}`, retryable: true }));
          });
      });
    } finally {
      if (timer) clearTimeout(timer);
      await subscription?.unsubscribe().catch(() => undefined);
    }
  });
}

function safeJson(entry: { json(): unknown }): unknown {
  try {
    return entry.json();
  } catch {
    return undefined;
  }
}
