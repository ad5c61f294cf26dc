import { setMaxListeners } from 'node:events';
import { MAX_RETRY_AFTER_MS } from './actors/CircuitBreaker.js';
import { isReusableResult, type MicrotaskRunner } from './actors/microtask.js';
import { boundedDeadline, flowIdOf, MicrotaskInputSchema, type MicrotaskResult } from './contracts/microtask.js';
import { describeIssues } from './actors/model/prompt.js';
import type { QueuedTask } from './actors/remoteMicrotask.js';
import { taskFailure, type TaskRunner } from './actors/task.js';
import { TaskJobSchema, type TaskJob } from './contracts/task.js';
import type { Job, WorkConsumer, WorkQueue } from './bus/Bus.js';
import type { ResultsStore } from './actors/ResultsStore.js';
import { MAX_RECORD_DEPTH, parseJsonInput } from './jsonInput.js';
import { silentLogger, type Logger } from './log.js';
import { retryStore } from './persistence/retryStore.js';
import { scrubSecrets } from './secrets.js';
import { isStoreUnavailable } from './persistence/StoreUnavailableError.js';
import { withTraceHeaders } from './ops/tracing.js';

export interface WorkerOptions {
  queue: WorkQueue;
  /** Runs each task; its results store is the shared one, so a task done before costs nothing. */
  runner: MicrotaskRunner;
  /**
   * Runs the module's tasks (jobs of `kind: 'task'`), its results store the shared one too.
   * None: a task job is answered `unknown_task` (this worker was started without --flows).
   */
  tasks?: TaskRunner;
  results: ResultsStore;
  /** Tells the flow waiting for a task its result (after it is stored). */
  announce?: (key: string, result: MicrotaskResult) => Promise<void>;
  concurrency: number;
  /** How often a running task tells the queue it is still at it (below the queue's ack wait). */
  heartbeatMs?: number;
  /** Backoff of a transient failure when the server gave no retry-after. */
  baseRetryDelayMs?: number;
  logger?: Logger;
}

/** What a job asks of the worker: a microtask for its runner, or a task of the module for its task runner. */
interface Work {
  key: string;
  deadlineAt: number;
  logFields: Record<string, string>;
  /** How long a put of its result is retried past its deadline. */
  storeRetryMs: number;
  /** Runs it: a result, or a rejection when the results store stayed down. */
  run(): Promise<MicrotaskResult>;
}

/** The longest wait before a task whose results store was down is delivered again. */
const MAX_STORE_DOWN_DELAY_MS = 30_000;

const QueuedTaskSchema = MicrotaskInputSchema.extend({ deadlineAt: MicrotaskInputSchema.shape.deadlineAt.unwrap() });

/**
 * A worker: takes microtasks off the work queue, at most `concurrency` at once, runs
 * each with the model port, stores its result under the task's key, then acks.
 *
 * In worker mode the queue owns the retries of transient failures (rate limits,
 * overload, network): the worker's model port is built without retries, and a task that
 * failed transiently is delivered again after a backoff (or the server's retry-after), while
 * its deadline allows, up to the queue's max deliveries. After the last one, its failure
 * is stored, so the waiting flow falls back, and it goes to the dead letters.
 *
 * A results store that fails (the bus restarting, slow) is not a failure of the task: its
 * put is retried with backoff; when it stays down the job is not acked but delivered again
 * later, and the runner keeps a paid answer in memory meanwhile, so that costs no second call.
 */
export interface Worker extends WorkConsumer {
  /**
   * Stops the model calls in flight (a shutdown whose grace period is over): their tasks
   * go back to the queue at once, for another worker, instead of being stored as failed.
   */
  abortInFlight(): void;
}

export async function startWorker(options: WorkerOptions): Promise<Worker> {
  const shutdown = new AbortController();
  // Every run in flight listens to it: as many as the concurrency, which may exceed Node's default of 10.
  setMaxListeners(0, shutdown.signal);
  const logger = options.logger ?? silentLogger;
  const heartbeatMs = options.heartbeatMs ?? 10_000;
  const baseDelay = options.baseRetryDelayMs ?? 1_000;

  // The result is stored first: an announcement that is missed is found by reading it.
  const announce = async (key: string, result: MicrotaskResult) => {
    await options.announce?.(key, result).catch((e: unknown) => logger.warn({ err: e, taskId: key }, 'could not announce a result'));
  };

  const handle = async (job: Job) => {
    let raw: unknown;
    try {
      // Anyone allowed to publish on the queue's subject can put a job there: read as any
      // input from outside, its depth bounded before schemas and JSON.stringify walk it. A
      // task holds flow data and model answers, both bounded well below MAX_RECORD_DEPTH.
      raw = parseJsonInput(job.data, MAX_RECORD_DEPTH);
    } catch (e) {
      await job.deadLetter(`the task ${scrubSecrets((e as Error).message)}`);
      return;
    }
    // A task of the user's module is marked so; a microtask's job has no kind (as before tasks were).
    const isTask = typeof raw === 'object' && raw !== null && (raw as { kind?: unknown }).kind === 'task';
    let work: Work;
    if (isTask) {
      const parsed = TaskJobSchema.safeParse(raw);
      if (!parsed.success) {
        logger.warn({ jobId: job.id }, 'a task job that does not parse went to the dead letters');
        await job.deadLetter(`not a task:\n${describeIssues(parsed.error)}`);
        return;
      }
      work = taskWork({ ...parsed.data, deadlineAt: boundedDeadline(parsed.data.deadlineAt) });
    } else {
      const parsed = QueuedTaskSchema.safeParse(raw);
      if (!parsed.success) {
        logger.warn({ jobId: job.id }, 'a job that is not a microtask went to the dead letters');
        await job.deadLetter(`not a microtask:\n${describeIssues(parsed.error)}`);
        return;
      }
      // Bounded as the runner bounds it: the store retries and redelivery waits go by it too.
      const task: QueuedTask = { ...parsed.data, deadlineAt: boundedDeadline(parsed.data.deadlineAt) };
      work = {
        key: task.key,
        deadlineAt: task.deadlineAt,
        logFields: { taskType: task.taskType },
        storeRetryMs: options.runner.storeRetryMs,
        run: () => options.runner.run(task, shutdown.signal),
      };
    }
    // A long model call (and a store retried) must keep telling the queue it is alive, or it is delivered twice.
    const heartbeat = setInterval(() => void job.working().catch(() => undefined), heartbeatMs);
    try {
      // In the trace context the daemon sent with the job: the task's spans continue its flow's trace.
      await withTraceHeaders(job.headers, () => run(job, work));
    } finally {
      clearInterval(heartbeat);
    }
  };

  /** A task job's work: the worker's task runner, or, without one, the failure that says so. */
  const taskWork = (task: TaskJob): Work => ({
    key: task.key,
    deadlineAt: task.deadlineAt,
    logFields: { task: task.task },
    storeRetryMs: options.tasks?.storeRetryMs ?? options.runner.storeRetryMs,
    run: async () =>
      options.tasks
        ? options.tasks.run(task, shutdown.signal)
        : taskFailure(
            task,
            {
              kind: 'unknown_task',
              message: `no task named "${task.task}" here (known: none): start the worker with --flows naming the module that exports it`,
              retryable: true,
            },
            0,
          ),
  });

  /** Runs the task and settles its job: acked, delivered again, or dead-lettered. */
  const run = async (job: Job, task: Work) => {
    const log = logger.child({ flowId: flowIdOf(task.key), taskId: task.key, ...task.logFields, delivery: job.deliveryCount });
    // Not acked: delivered again once the store is back (to this worker, whose runner then
    // answers from memory, or to another that finds the answer stored by then).
    const storeDown = async (e: unknown) => {
      const delayMs = Math.min(MAX_STORE_DOWN_DELAY_MS, baseDelay * 2 ** (job.deliveryCount - 1));
      log.warn({ err: e, delayMs }, 'results store unavailable: the task is not acked and will be delivered again');
      await job.retry(delayMs);
    };
    /** The worker's own puts (results the flow must hear of, not reused): retried too; false when the store stayed down. */
    const put = async (result: MicrotaskResult): Promise<boolean> => {
      try {
        await retryStore(() => options.results.put(task.key, result), {
          until: Math.max(task.deadlineAt, Date.now() + task.storeRetryMs),
          onRetry: (e, attempt) => {
            if (attempt === 1) log.warn({ err: e }, 'could not store a result; retrying');
          },
        });
        return true;
      } catch (e) {
        await storeDown(e);
        return false;
      }
    };

    let result: MicrotaskResult;
    try {
      result = await task.run();
    } catch (e) {
      // The runner's one rejection: its store stayed down (it keeps a paid answer meanwhile).
      if (!isStoreUnavailable(e)) throw e;
      await storeDown(e);
      return;
    }
    if (shutdown.signal.aborted && !result.success && result.error?.kind === 'cancelled') {
      log.info('stopped by the shutdown; the task goes back to the queue');
      await job.retry(0);
      return;
    }

    if (!result.success && result.error?.retryable) {
      // The server's retry-after, capped as the breaker caps it: taken as is, a retry-after of
      // an hour dead-lettered a task at once (past its deadline) for a server back in seconds.
      const delay = Math.min(result.error.retryAfterMs ?? baseDelay * 2 ** (job.deliveryCount - 1) * (1 - Math.random() * 0.25), MAX_RETRY_AFTER_MS);
      const lastDelivery = job.deliveryCount >= job.maxDeliver;
      if (!lastDelivery && Date.now() + delay < task.deadlineAt) {
        log.info({ delayMs: Math.round(delay), error: result.error }, 'transient failure; the task will be delivered again');
        await job.retry(delay);
        return;
      }
      if (!(await put(result))) return;
      await announce(task.key, result);
      log.warn({ error: result.error }, 'the task failed on its last chance; stored for its flow and dead-lettered');
      await job.deadLetter(`${result.error.kind}: ${result.error.message}`);
      return;
    }
    // The runner stored what is worth reusing; the rest is stored for the waiting flow only.
    if (!isReusableResult(result) && !result.cached && !(await put(result))) return;
    await announce(task.key, result);
    await job.ack();
  };

  const consumer = await options.queue.consume(handle, { concurrency: options.concurrency });
  return { stop: () => consumer.stop(), abortInFlight: () => shutdown.abort(new Error('worker shutting down')) };
}
