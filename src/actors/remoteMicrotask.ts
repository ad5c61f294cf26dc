import { fromPromise } from 'xstate';
import type { Bus, KeyValueStore, KvEntry, WorkQueue } from '../bus/Bus.js';
import { resultKey } from '../bus/resultKey.js';
import { ResultsWatch, type ResultWaiter } from '../bus/ResultsWatch.js';
import { silentLogger, type Logger } from '../log.js';
import { zeroUsage } from '../contracts/usage.js';
import { firstLine, retryStore } from '../persistence/retryStore.js';
import { DEFAULT_STORE_RETRY_MS, DEFAULT_TIMEOUT_MS, fallbackFor, isReusableResult, stopOnPermanentCause, withDeadline, type Fallbacks } from './microtask.js';
import { boundedDeadline, flowIdOf, MicrotaskInputSchema, MicrotaskResultSchema, type MicrotaskError, type MicrotaskInput, type MicrotaskResult } from '../contracts/microtask.js';
import { ResultsUnavailableError } from './ResultsStore.js';
import { describeIssues } from './model/prompt.js';
import { traceHeaders, traceMicrotask } from '../ops/tracing.js';

/**
 * Why a run's own signal is aborted once it is over (its retries stop): one reason for every
 * run. `abort()` without one builds a DOMException with a stack trace per run, nobody reads it.
 */
const RUN_OVER = new Error('the microtask run is over');

export interface RemoteMicrotaskOptions {
  bus: Bus;
  queue: WorkQueue;
  results: KeyValueStore;
  /**
   * The one watch of the results bucket the runs share (made from `results` when not given).
   * Given: the caller closes it; made here, it closes itself a while after its last waiter.
   */
  resultsWatch?: ResultsWatch;
  /** Not used any more: results are watched in the bucket, not heard on their subjects. Kept so callers compile. */
  subjectPrefix?: string;
  /**
   * How long past a task's deadline to wait for a worker's answer before giving up on
   * it (a worker may be starting, or the queue long): the flow then falls back. Only a bus
   * that answers counts: the wait goes on while the bus was in trouble within this time.
   */
  graceMs?: number;
  /**
   * How long past the deadline and grace a bus that does not answer is waited for, before
   * the flow stops (StoreUnavailableError, resumable) instead of falling back: as long as a
   * worker retries storing a paid answer (the runner's storeRetryMs). Default 30 s.
   */
  busOutageMs?: number;
  /**
   * Ignored: the bucket is watched, never polled (a missed write is caught up after a
   * reconnect by reading the waiting keys once). Kept so callers compile.
   */
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
 * the worker's result to be stored in the results bucket. A result already stored is
 * returned without waiting (the job enqueued with the read finds it too and costs no model
 * call). The deadline is fixed at the first enqueue and travels with the task, so time
 * spent queued counts against it.
 *
 * Waiting costs the bus nothing: the runs of a daemon share one watch of the bucket
 * ({@link ResultsWatch}), which hands each write to the run waiting on its key; no run polls
 * and none subscribes. Writes the watch may have missed (the connection was lost) are
 * caught up by reading each waiting key once after the reconnect.
 *
 * A slow or restarting bus is never a reason to fall back: subscribing, reading and
 * enqueuing are retried with backoff until the deadline (a task enqueued later would only
 * time out), and a result that arrives late is used. When the bus stays down past that,
 * the actor rejects with a StoreUnavailableError: its flow stops, resumable. It falls back
 * only when the bus answers and no worker did.
 */
export function createRemoteMicrotaskLogic(options: RemoteMicrotaskOptions) {
  const logger = options.logger ?? silentLogger;
  const waitFor = remoteResults(options);

  // In its span (a child of its flow's); the job carries the span's context to the worker.
  // A worker's failure no fallback helps (a refused key, no credit, an unknown model) rejects
  // with a FlowStopError, as the embedded actor does: the flow ends with it, no fallback.
  return withDeadline(
    fromPromise<MicrotaskResult, MicrotaskInput>(({ input, signal }) => traceMicrotask(input, 'send', () => wait(input, signal).then(stopOnPermanentCause))),
    options.defaultTimeoutMs ?? DEFAULT_TIMEOUT_MS,
  );

  function failureOf(input: MicrotaskInput, error: MicrotaskError, started: number): MicrotaskResult {
    return {
      success: false,
      taskType: input.taskType,
      key: input.key,
      error,
      fallback: fallbackFor(options.fallbacks, input, error, logger),
      durationMs: performance.now() - started,
      usage: zeroUsage(),
      cached: false,
    };
  }

  function wait(raw: MicrotaskInput, signal: AbortSignal): Promise<MicrotaskResult> {
    const started = performance.now();
    // Checked here as the embedded runner checks it: a worker would only dead-letter it, and
    // the flow would wait its whole timeout for an answer that never comes.
    const parsed = MicrotaskInputSchema.safeParse(raw);
    if (!parsed.success) {
      const error: MicrotaskError = { kind: 'invalid_request', message: `invalid microtask input:\n${describeIssues(parsed.error)}`, retryable: false };
      logger.warn({ flowId: flowIdOf(String(raw?.key)), taskId: raw?.key, taskType: raw?.taskType }, 'invalid microtask input: falls back, not enqueued');
      return Promise.resolve(failureOf(raw ?? ({} as MicrotaskInput), error, started));
    }
    const input = parsed.data;
    const timeoutMs = input.timeoutMs ?? options.defaultTimeoutMs ?? DEFAULT_TIMEOUT_MS;
    const task: QueuedTask = { ...input, deadlineAt: input.deadlineAt === undefined ? Date.now() + timeoutMs : boundedDeadline(input.deadlineAt) };
    return waitFor(
      {
        key: input.key,
        what: `microtask ${input.taskType}`,
        log: logger.child({ flowId: flowIdOf(input.key), taskId: input.key, taskType: input.taskType }),
        deadlineAt: task.deadlineAt,
        body: () => JSON.stringify(task),
        failure: (error) => failureOf(input, error, started),
      },
      signal,
    );
  }
}

/** How a flow's job waits on the bus: the queue it goes to, the bucket its result is written in. */
export type RemoteResultsOptions = Pick<RemoteMicrotaskOptions, 'queue' | 'results' | 'resultsWatch' | 'graceMs' | 'busOutageMs'>;

/** One job a flow waits on a worker for: a microtask, or a task of the user's module (src/actors/remoteTask.ts). */
export interface RemoteJob {
  /** Its idempotency key: the job's id on the queue, its result's key in the bucket. */
  key: string;
  /** What it is, for messages: `microtask summarize`, `task normalize`. */
  what: string;
  log: Logger;
  /** Fixed at its first enqueue (epoch ms); travels with it, so time queued counts. */
  deadlineAt: number;
  /** The job's body on the queue. */
  body: () => string;
  /** The envelope of a run that got no result: cancelled, or no worker answered in time. */
  failure(error: MicrotaskError): MicrotaskResult;
}

/**
 * Enqueues a job and waits for its result in the results bucket, as createRemoteMicrotaskLogic
 * describes; the runs of one process share one watch of the bucket.
 */
export function remoteResults(options: RemoteResultsOptions): (job: RemoteJob, signal: AbortSignal) => Promise<MicrotaskResult> {
  const graceMs = options.graceMs ?? 5_000;
  const busOutageMs = options.busOutageMs ?? DEFAULT_STORE_RETRY_MS;
  const watch = options.resultsWatch ?? new ResultsWatch(options.results);
  return wait;

  async function wait(job: RemoteJob, signal: AbortSignal): Promise<MicrotaskResult> {
    const key = resultKey(job.key);
    const { what, log, failure } = job;
    // Retries of this run stop with it (its flow cancelled, the daemon stopping).
    const stopped = new AbortController();
    const abort = () => stopped.abort(signal.reason);
    if (signal.aborted) abort();
    else signal.addEventListener('abort', abort, { once: true });

    /** Takes this run off the watch. */
    let release: (() => void) | undefined;
    /** Set once the run is over: a waiter added after that is taken off at once. */
    let released = false;
    const timers: NodeJS.Timeout[] = [];
    try {
      return await new Promise<MicrotaskResult>((resolve, reject) => {
        let finished = false;
        let initialRevision = 0;
        /** When a bus operation of this run last failed, and how. */
        let troubleAt = Number.NEGATIVE_INFINITY;
        let lastError: unknown;
        const finish = (result: MicrotaskResult) => {
          if (finished) return;
          finished = true;
          stopped.abort(RUN_OVER);
          resolve(result);
        };
        const stop = (what: string, e: unknown) => {
          if (finished) return;
          finished = true;
          stopped.abort(RUN_OVER);
          log.error({ err: e }, `the bus stayed unavailable: could not ${what}; the flow stops (resumable)`);
          reject(
            new ResultsUnavailableError(`results store unavailable: could not ${what}: ${e === undefined ? 'NATS did not answer' : firstLine(e)}`, {
              key: job.key,
              cause: e,
            }),
          );
        };
        /** `operation`, retried until `until`; a failure is remembered as trouble on the bus. */
        const retrying = <T>(what: string, operation: () => Promise<T>, until: number) =>
          retryStore(operation, {
            until,
            signal: stopped.signal,
            onRetry: (e, attempt) => {
              troubleAt = Date.now();
              lastError = e;
              if (attempt === 1) log.warn({ err: e }, `could not ${what}; retrying`);
            },
          }).catch((e: unknown) => {
            if (!stopped.signal.aborted) {
              troubleAt = Date.now();
              lastError = e;
            }
            throw e;
          });
        /** A stored result newer than the one there when this run began. */
        const readStored = async () => {
          const entry = await options.results.get(key);
          const result = parseResult(entry);
          return entry && result && entry.revision > initialRevision ? result : undefined;
        };
        const cancelled = () => finish(failure({ kind: 'cancelled', message: 'the flow stopped waiting for this task', retryable: false }));
        if (signal.aborted) return cancelled();
        signal.addEventListener('abort', cancelled, { once: true });

        // Until the deadline: a task enqueued after it would only time out. A run whose
        // deadline had passed (a flow resumed) still looks for its result for a while.
        const setupUntil = job.deadlineAt > Date.now() ? job.deadlineAt : Date.now() + graceMs;
        const fallbackAt = Math.max(job.deadlineAt, Date.now()) + graceMs;
        const giveUpAt = fallbackAt + busOutageMs;
        let enqueued = false;
        // An operation may hang rather than fail (a subscription's flush waits for a reconnect).
        timers.push(
          setTimeout(() => {
            if (!enqueued) stop(`enqueue ${what} (${job.key}) before its deadline`, lastError);
          }, Math.max(0, setupUntil - Date.now())),
        );

        /**
         * Past the deadline and grace: the stored result, else the fallback, but only once the
         * bus has answered for a grace period (a worker retrying its store may be about to land it).
         */
        const settle = async () => {
          let found: MicrotaskResult | undefined;
          try {
            found = await retrying(`read the result of ${what} (${job.key})`, readStored, giveUpAt);
          } catch (e) {
            if (!stopped.signal.aborted) stop(`read the result of ${what} (${job.key})`, e);
            return;
          }
          if (found) return finish(found);
          // A gap the watch reported counts as trouble too (a run added after it did not hear of it).
          const quietAt = Math.max(troubleAt, watch.lastGapAt) + graceMs;
          if (Date.now() < quietAt && quietAt < giveUpAt) {
            timers.push(setTimeout(() => void settle(), quietAt - Date.now()));
            return;
          }
          finish(
            failure({
              kind: 'timeout',
              message: `no worker answered within ${graceMs} ms after the task's deadline; is a worker running?`,
              retryable: true,
            }),
          );
        };

        const run = async () => {
          /** Set once the read below is in: a write seen before it may be older than what it read. */
          let read = false;
          let early: KvEntry | undefined;
          const waiter: ResultWaiter = {
            onEntry: (entry) => {
              if (!read) {
                if (!early || entry.revision > early.revision) early = entry;
                return;
              }
              const result = entry.revision > initialRevision ? parseResult(entry) : undefined;
              if (result) finish(result);
            },
            onGap: async () => {
              troubleAt = Date.now();
              if (!read || finished) return;
              const found = await retrying(`read the result of ${what} (${job.key})`, readStored, giveUpAt).catch(() => undefined);
              if (found) finish(found);
            },
          };
          // On the watch first (at once when it is open): a write after this reaches the
          // waiter, so the read below and the enqueue (out together, one round trip) miss nothing.
          const releasing = await retrying('watch the results', () => watch.wait(key, waiter), setupUntil);
          if (released) releasing();
          else release = releasing;
          if (finished) return;
          const reading = retrying(`read the result of ${what} (${job.key})`, () => options.results.get(key), setupUntil);
          // Retried with the same id: an enqueue that timed out but landed is dropped as a duplicate.
          const enqueue = (jobId: string) =>
            retrying(`enqueue ${what} (${job.key})`, () => options.queue.enqueue(jobId, job.body(), traced), setupUntil);
          const headers = traceHeaders();
          const traced = headers ? { headers } : undefined;
          const enqueueing = enqueue(job.key);
          const [entry, first] = await Promise.all([reading, enqueueing]);
          enqueued = true;
          if (finished) return;
          const stored = parseResult(entry);
          // Stored by an earlier run (a resumed flow): the job just enqueued finds it too and costs no model call.
          if (stored && isReusableResult(stored)) return finish({ ...stored, cached: true, durationMs: 0 });
          // A transient failure from an earlier run is not an answer; its revision tells a new one apart.
          initialRevision = entry?.revision ?? 0;
          read = true;
          const written = early && early.revision > initialRevision ? parseResult(early) : undefined;
          if (written) return finish(written);
          let duplicate = first.duplicate;
          let jobId = job.key;
          if (initialRevision && duplicate) {
            // The job under the key is the one that failed (still in the duplicate window): a
            // retry is a new job on purpose, its id naming the failure it follows.
            jobId = `${job.key}#${initialRevision}`;
            ({ duplicate } = await enqueue(jobId));
            if (finished) return;
          }
          log.debug({ duplicate, jobId }, 'task enqueued');
          timers.push(setTimeout(() => void settle(), Math.max(0, fallbackAt - Date.now())));
        };
        run().catch((e: unknown) => {
          if (!stopped.signal.aborted) stop(`enqueue ${what} (${job.key}) before its deadline`, e);
        });
      });
    } finally {
      signal.removeEventListener('abort', abort);
      for (const timer of timers) clearTimeout(timer);
      released = true;
      release?.();
    }
  }
}
