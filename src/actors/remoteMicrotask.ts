import { fromPromise } from 'xstate';
import type { Bus, BusSubscription, KeyValueStore, WorkQueue } from '../bus/Bus.js';
import { resultKey } from '../bus/KvResultsStore.js';
import { subjects } from '../bus/subjects.js';
import { silentLogger, type Logger } from '../log.js';
import { zeroUsage } from '../usage.js';
import { DEFAULT_TIMEOUT_MS, defaultFallback, isReusableResult, withDeadline, type Fallbacks } from './microtask.js';
import { flowIdOf, MicrotaskResultSchema, type MicrotaskError, type MicrotaskInput, type MicrotaskResult } from './microtaskTypes.js';

export interface RemoteMicrotaskOptions {
  bus: Bus;
  queue: WorkQueue;
  results: KeyValueStore;
  subjectPrefix?: string;
  /**
   * How long past a task's deadline to wait for a worker's answer before giving up on
   * it (a worker may be starting, or the queue long): the flow then falls back.
   */
  graceMs?: number;
  /** How often the results bucket is read, in case an announcement was missed (a reconnect). */
  pollMs?: number;
  /** The task types' fallbacks, for when no worker answers. */
  fallbacks?: Fallbacks;
  /** A microtask's timeout when its input gives none (MICROTASK_TIMEOUT_MS). */
  defaultTimeoutMs?: number;
  logger?: Logger;
}

/** What travels on the work queue: the microtask input with its absolute deadline. */
export type QueuedTask = MicrotaskInput & { deadlineAt: number };

const parseResult = (entry: { json(): unknown } | undefined): MicrotaskResult | undefined => {
  if (!entry) return undefined;
  try {
    const parsed = MicrotaskResultSchema.safeParse(entry.json());
    return parsed.success ? parsed.data : undefined;
  } catch {
    return undefined;
  }
};

/**
 * The microtask actor when microtasks run on workers: it enqueues the task (its
 * idempotency key as the message id, so a duplicate enqueue is dropped) and waits for
 * the worker's result: announced on a result subject, stored in the results bucket. A
 * result already stored is returned without enqueuing anything. The deadline is fixed at
 * the first enqueue and travels with the task, so time spent queued counts against it.
 */
export function createRemoteMicrotaskLogic(options: RemoteMicrotaskOptions) {
  const graceMs = options.graceMs ?? 5_000;
  const pollMs = options.pollMs ?? 5_000;
  const logger = options.logger ?? silentLogger;
  const names = subjects(options.subjectPrefix);

  return withDeadline(fromPromise<MicrotaskResult, MicrotaskInput>(async ({ input, signal }) => {
    const started = performance.now();
    const key = resultKey(input.key);
    const timeoutMs = input.timeoutMs ?? options.defaultTimeoutMs ?? DEFAULT_TIMEOUT_MS;
    const task: QueuedTask = { ...input, deadlineAt: input.deadlineAt ?? Date.now() + timeoutMs };
    const log = logger.child({ flowId: flowIdOf(input.key), taskId: input.key, taskType: input.taskType });
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

    let subscription: BusSubscription | undefined;
    const timers: NodeJS.Timeout[] = [];
    try {
      return await new Promise<MicrotaskResult>((resolve) => {
        let finished = false;
        let initialRevision = 0;
        const finish = (result: MicrotaskResult) => {
          if (finished) return;
          finished = true;
          resolve(result);
        };
        /** A stored result newer than the one there when this run began. */
        const readStored = async () => {
          const entry = await options.results.get(key);
          const result = parseResult(entry);
          if (entry && result && entry.revision > initialRevision) finish(result);
        };
        signal.addEventListener(
          'abort',
          () => finish(failure({ kind: 'cancelled', message: 'the flow stopped waiting for this task', retryable: false })),
          { once: true },
        );

        const run = async () => {
          // Listen first, then read and enqueue: an announcement in between cannot be missed.
          subscription = await options.bus.subscribe(names.taskResult(input.key), (message) => {
            const result = parseResult(message);
            if (result) finish(result);
          });
          const entry = await options.results.get(key);
          const stored = parseResult(entry);
          if (stored && isReusableResult(stored)) return finish({ ...stored, cached: true, durationMs: 0 });
          // A transient failure from an earlier run is not an answer; its revision tells a new one apart.
          initialRevision = entry?.revision ?? 0;
          if (finished) return;
          // A retry after a stored transient failure is a new job on purpose: its id names
          // the failure it follows, so the queue's duplicate window does not drop it.
          const jobId = initialRevision ? `${input.key}#${initialRevision}` : input.key;
          const { duplicate } = await options.queue.enqueue(jobId, JSON.stringify(task));
          log.debug({ duplicate, jobId }, 'task enqueued');
          const poll = setInterval(() => void readStored().catch(() => undefined), pollMs);
          timers.push(poll);
          timers.push(
            setTimeout(
              () => {
                void readStored()
                  .catch(() => undefined)
                  .then(() =>
                    finish(
                      failure({
                        kind: 'timeout',
                        message: `no worker answered within ${graceMs} ms after the task's deadline; is a worker running?`,
                        retryable: true,
                      }),
                    ),
                  );
              },
              Math.max(0, task.deadlineAt + graceMs - Date.now()),
            ),
          );
        };
        run().catch((e: unknown) => {
          log.warn({ err: e }, 'could not enqueue the task');
          finish(failure({ kind: 'unavailable', message: `the bus failed: ${(e as Error).message}`, retryable: true }));
        });
      });
    } finally {
      for (const timer of timers) clearTimeout(timer);
      await subscription?.unsubscribe().catch(() => undefined);
    }
  }), options.defaultTimeoutMs ?? DEFAULT_TIMEOUT_MS);
}
