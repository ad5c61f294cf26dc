import { fromPromise } from 'xstate';
import type { z } from 'zod';
import { silentLogger, type Logger } from '../log.js';
import { MAX_ANSWER_DEPTH, MAX_RECORD_DEPTH } from '../jsonInput.js';
import { findNonJson } from '../persistence/SnapshotStore.js';
import { firstLine, retryStore, rootStoreError } from '../persistence/retryStore.js';
import { describeStoreError } from '../persistence/StoreUnavailableError.js';
import { scrubSecrets } from '../secrets.js';
import { zeroUsage } from '../contracts/usage.js';
import { flowIdOf, type MicrotaskError, type MicrotaskResult } from '../contracts/microtask.js';
import { TaskInputSchema, type TaskInput } from '../contracts/task.js';
import { describeIssues } from './model/prompt.js';
import { DEFAULT_STORE_RETRY_MS, DEFAULT_TIMEOUT_MS, isReusableResult } from './microtask.js';
import { ResultsUnavailableError, type ResultsStore } from './ResultsStore.js';

/** What a task's `run` is given beside its input. */
export interface TaskContext {
  /** The idempotency key its result is stored under. */
  key: string;
  /** Aborted when the run's deadline passes or its flow stops waiting (cancelled, a shutdown). */
  signal: AbortSignal;
}

/**
 * A user's own deterministic step (Temporal's activity): a function of a JSON input its
 * zod schema accepts, to a JSON value. A flow runs it by name with an idempotency key
 * (FlowBlocks.task); its result is stored under the key before the flow hears of it, so a
 * resumed flow never runs a finished one again. Delivery is at least once: a process that
 * dies while it runs, before its result is stored, runs it again on resume.
 */
export interface TaskDefinition<S extends z.ZodType = z.ZodType, O = unknown> {
  input: S;
  run(input: z.output<S>, context: TaskContext): O | Promise<O>;
  /** How long a run may take, time queued for a worker included; the runner's default (MICROTASK_TIMEOUT_MS) when unset. */
  timeoutMs?: number;
}

/** The tasks of a module by name (`export const tasks = { normalize: defineTask({ ... }) }`). */
// `any`: a record holds tasks of different input schemas, each checked against its own.
export type Tasks = Readonly<Record<string, TaskDefinition<any, unknown>>>;

/** Types a task where it is written: `run`'s input is what its schema gives. */
export const defineTask = <S extends z.ZodType, O>(definition: TaskDefinition<S, O>): TaskDefinition<S, O> => definition;

export interface TaskDeps {
  tasks: Tasks;
  results: ResultsStore;
  logger?: Logger;
  /** A task's timeout when its definition gives none (MICROTASK_TIMEOUT_MS). */
  defaultTimeoutMs?: number;
  /** How long a result's store (and a lookup whose deadline had passed) is retried. Default 30 s. */
  storeRetryMs?: number;
}

/** The envelope of a task's run: a microtask's (MicrotaskResult), its task type the task's name, no tokens spent. */
export function taskFailure(input: { task?: unknown; key?: unknown }, error: MicrotaskError, durationMs: number): MicrotaskResult {
  return {
    success: false,
    taskType: typeof input.task === 'string' && input.task ? input.task : 'unknown',
    key: typeof input.key === 'string' && input.key ? input.key : 'unknown',
    error,
    durationMs,
    usage: zeroUsage(),
    cached: false,
  };
}

/**
 * The input of a run as the runner takes it, or why it is refused: the shape, and JSON
 * data only (it is saved with the flow and sent to workers; a Date or a function would
 * arrive as something else).
 */
export function checkTaskInput(raw: unknown): { input: z.output<typeof TaskInputSchema> } | { error: MicrotaskError } {
  const parsed = TaskInputSchema.safeParse(raw);
  if (!parsed.success) return { error: { kind: 'invalid_request', message: `invalid task input:\n${describeIssues(parsed.error)}`, retryable: false } };
  // No input at all is fine (a task of no arguments); `undefined` inside one is not.
  const notJson = parsed.data.input === undefined ? undefined : findNonJson(parsed.data.input, 'input', MAX_RECORD_DEPTH);
  if (notJson) return { error: { kind: 'invalid_request', message: `task ${parsed.data.task}: its input is not JSON data: ${notJson}`, retryable: false } };
  return { input: parsed.data };
}

/** How long the named task may run when its definition does not say. */
export const taskTimeoutMs = (tasks: Tasks | undefined, name: string, defaultTimeoutMs = DEFAULT_TIMEOUT_MS): number =>
  (Object.hasOwn(tasks ?? {}, name) ? tasks![name]!.timeoutMs : undefined) ?? defaultTimeoutMs;

/**
 * Runs the module's tasks by name, here: looks the key up in the results store first (a
 * result stored there is returned, the task not run), checks the input against the task's
 * schema, runs it under its deadline, and stores a success before returning it. Every
 * outcome is a MicrotaskResult; a thrown error is a failure (`task_failed`), the flow's
 * machine decides what follows. Failures are not stored as answers: the task runs again
 * on a resume. The one rejection is a results store that stays unavailable
 * (ResultsUnavailableError): the flow stops, resumable.
 */
export class TaskRunner {
  private readonly logger: Logger;

  constructor(private readonly deps: TaskDeps) {
    this.logger = deps.logger ?? silentLogger;
  }

  get storeRetryMs(): number {
    return this.deps.storeRetryMs ?? DEFAULT_STORE_RETRY_MS;
  }

  /** The tasks this runner knows, for messages. */
  names(): string[] {
    return Object.keys(this.deps.tasks);
  }

  async run(raw: TaskInput & { deadlineAt?: number }, signal?: AbortSignal): Promise<MicrotaskResult> {
    const started = performance.now();
    const took = () => performance.now() - started;
    const checked = checkTaskInput(raw);
    if ('error' in checked) return taskFailure(raw ?? {}, checked.error, took());
    const { task: name, key } = checked.input;
    const failed = (error: MicrotaskError) => taskFailure(checked.input, error, took());
    const log = this.logger.child({ flowId: flowIdOf(key), taskId: key, task: name });
    const definition = Object.hasOwn(this.deps.tasks, name) ? this.deps.tasks[name] : undefined;
    const deadlineAt = raw.deadlineAt ?? Date.now() + taskTimeoutMs(this.deps.tasks, name, this.deps.defaultTimeoutMs);
    const location = this.deps.results.location ?? 'the results store';

    let stored: MicrotaskResult | undefined;
    try {
      // A failed lookup is retried, never taken for "nothing stored": that would run a finished task again.
      stored = await retryStore(() => this.deps.results.get(key), {
        until: deadlineAt > Date.now() ? deadlineAt : Date.now() + this.storeRetryMs,
        ...(signal ? { signal } : {}),
        onRetry: (e, attempt) => {
          if (attempt === 1) log.warn({ err: e }, 'results store lookup failed; retrying');
        },
      });
    } catch (e) {
      if (signal?.aborted) return failed({ kind: 'cancelled', message: `task ${name} cancelled before it ran`, retryable: false });
      throw new ResultsUnavailableError(`results store unavailable: cannot read ${location} for task ${name} (${key}): ${firstLine(rootStoreError(e))}`, { key, cause: e });
    }
    if (stored && isReusableResult(stored)) {
      log.debug('result found under its key; the task is not run again');
      return { ...stored, cached: true, durationMs: 0 };
    }
    if (signal?.aborted) return failed({ kind: 'cancelled', message: `task ${name} cancelled before it ran`, retryable: false });
    if (!definition) {
      // Retryable: on a worker, the queue delivers it again, perhaps to a worker whose module has it.
      return failed({
        kind: 'unknown_task',
        message: `no task named "${name}" here (known: ${this.names().join(', ') || 'none'}): start it with --flows naming the module that exports it`,
        retryable: true,
      });
    }
    const input = definition.input.safeParse(checked.input.input);
    if (!input.success) return failed({ kind: 'invalid_request', message: `task ${name}: its input schema refused the input:\n${describeIssues(input.error)}`, retryable: false });
    const timeLeft = deadlineAt - Date.now();
    if (timeLeft <= 0) return failed({ kind: 'timeout', message: `task ${name} timed out: its deadline had passed`, retryable: false });

    const outcome = await runUnder(definition, input.data, key, timeLeft, signal);
    let result: MicrotaskResult;
    if ('value' in outcome) {
      const notJson = outcome.value === undefined ? undefined : findNonJson(outcome.value, 'output', MAX_ANSWER_DEPTH);
      result = notJson
        ? failed({ kind: 'task_failed', message: `task ${name} returned a value that is not JSON data: ${notJson}`, retryable: false })
        : { success: true, taskType: name, key, result: outcome.value, durationMs: took(), usage: zeroUsage(), cached: false };
    } else if ('stopped' in outcome) {
      result =
        outcome.stopped === 'timeout'
          ? failed({ kind: 'timeout', message: `task ${name} timed out after ${Math.round(timeLeft)} ms`, retryable: false })
          : failed({ kind: 'cancelled', message: `task ${name} cancelled while it ran`, retryable: false });
    } else {
      const message = outcome.error instanceof Error ? outcome.error.message : String(outcome.error);
      // Scrubbed here, before the result goes to a store, a snapshot, a journal or an answer.
      result = failed({ kind: 'task_failed', message: scrubSecrets(message), retryable: false });
    }
    if (result.success) {
      // Stored before the flow hears of it: a crash after this point does not run it again.
      await this.store(key, name, result, deadlineAt, log);
      log.info({ durationMs: Math.round(result.durationMs) }, 'task done');
    } else log.warn({ durationMs: Math.round(result.durationMs), error: result.error }, 'task failed');
    return result;
  }

  private async store(key: string, name: string, result: MicrotaskResult, deadlineAt: number, log: Logger): Promise<void> {
    try {
      await retryStore(() => this.deps.results.put(key, result), {
        until: Math.max(deadlineAt, Date.now() + this.storeRetryMs),
        onRetry: (e, attempt) => {
          if (attempt === 1) log.warn({ err: e }, 'could not store a task result; retrying');
        },
      });
    } catch (e) {
      log.error({ err: e }, 'results store unavailable: the flow stops; the task runs again on resume');
      throw new ResultsUnavailableError(
        `${describeStoreError(rootStoreError(e), this.deps.results.location ?? 'the results store')} (task ${name} ${key} ran but its result could not be stored: it runs again when the flow resumes)`,
        { key, cause: e },
      );
    }
  }
}

type Outcome = { value: unknown } | { error: unknown } | { stopped: 'timeout' | 'cancelled' };

/**
 * Runs the task's function under its deadline and the caller's signal. A function cannot
 * be stopped from outside: it is told by its context's signal, and no longer waited for.
 */
function runUnder(definition: TaskDefinition, input: unknown, key: string, timeLeft: number, signal: AbortSignal | undefined): Promise<Outcome> {
  const controller = new AbortController();
  return new Promise<Outcome>((resolve) => {
    const timer = setTimeout(() => {
      controller.abort(new DOMException(`the task timed out after ${Math.round(timeLeft)} ms`, 'TimeoutError'));
      resolve({ stopped: 'timeout' });
    }, timeLeft);
    const cancel = () => {
      controller.abort(signal!.reason);
      resolve({ stopped: 'cancelled' });
    };
    if (signal?.aborted) cancel();
    else signal?.addEventListener('abort', cancel, { once: true });
    const done = (outcome: Outcome) => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', cancel);
      resolve(outcome);
    };
    // In a promise: a function that throws at once is a failure like one that rejects.
    Promise.resolve()
      .then(() => definition.run(input, { key, signal: controller.signal }))
      .then(
        (value) => done({ value }),
        (error: unknown) => done({ error }),
      );
  });
}

/**
 * The task actor (FlowBlocks.task) when tasks run in this process. Input `{ task, key,
 * input }`; output the result envelope. The actor's signal (its flow stopped) is the task's.
 */
export function createTaskLogic(runner: TaskRunner) {
  return fromPromise<MicrotaskResult, TaskInput>(({ input, signal }) => runner.run(input, signal));
}
