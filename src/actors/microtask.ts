import { fromPromise, type PromiseActorLogic } from 'xstate';
import type { z } from 'zod';
import { silentLogger, type Logger } from '../log.js';
import { describeStoreError } from '../persistence/StoreUnavailableError.js';
import { firstLine, retryStore, rootStoreError } from '../persistence/retryStore.js';
import { scrubSecrets } from '../secrets.js';
import { zeroUsage } from '../contracts/usage.js';
import { CircuitBreaker } from './CircuitBreaker.js';
import { describeIssues } from './model/prompt.js';
import { isModelError, type ModelErrorKind } from './model/ModelError.js';
import type { ModelPort } from './model/ModelPort.js';
import { FlowStopError } from '../contracts/flowStop.js';
import {
  boundedDeadline,
  flowIdOf,
  flowStopCode,
  MicrotaskInputSchema,
  type MicrotaskError,
  type MicrotaskInput,
  type MicrotaskResult,
} from '../contracts/microtask.js';
import { ResultsUnavailableError, type ResultsStore } from './ResultsStore.js';
import { traceMicrotask } from '../ops/tracing.js';

/** Named answer schemas: microtask inputs refer to them by name, as inputs must be JSON. */
export type AnswerSchemas = Readonly<Record<string, z.ZodType>>;

/** A degraded but useful answer for a task type, from its input and why it failed. */
export type Fallback = (input: MicrotaskInput, error: MicrotaskError) => unknown;
export type Fallbacks = Readonly<Record<string, Fallback>>;

export const defaultFallback: Fallback = (input, error) => ({
  fallback: true,
  taskType: input.taskType,
  message: `no model answer (${error.kind}); nothing better is known for this task type`,
});

/**
 * The task type's own fallback, else the default. By own property: the task type comes with
 * the input (any NATS client's), and `__proto__` or `constructor` name none in a program's
 * plain object. One that throws gets the default answer, logged: a fallback runs in timers
 * and abort handlers (remote), where a throw would end the process, and never fails a flow.
 */
export function fallbackFor(fallbacks: Fallbacks | undefined, input: MicrotaskInput, error: MicrotaskError, logger: Logger): unknown {
  const own = fallbacks && typeof input.taskType === 'string' && Object.hasOwn(fallbacks, input.taskType) ? fallbacks[input.taskType] : undefined;
  if (typeof own === 'function') {
    try {
      return own(input, error);
    } catch (e) {
      logger.warn({ taskType: input.taskType, err: e }, 'the fallback threw; the default one is used');
    }
  }
  return defaultFallback(input, error);
}

export interface MicrotaskDeps {
  model: ModelPort;
  results: ResultsStore;
  answers?: AnswerSchemas;
  fallbacks?: Fallbacks;
  logger?: Logger;
  /** Fails calls fast while the model is known to be unreachable; one per runner by default. */
  breaker?: CircuitBreaker;
  /** A microtask's timeout when its input gives none (MICROTASK_TIMEOUT_MS). */
  defaultTimeoutMs?: number;
  /**
   * How long the store of a paid answer is retried after the answer came, even past the
   * microtask's deadline (which bounds the model call, not its bookkeeping); also how long
   * a lookup is retried for a run whose deadline had already passed. Default 30 s.
   */
  storeRetryMs?: number;
  /**
   * The results store queues its writes on the same write queue as the flows' saves (one
   * lmdb database: the composition root's embedded state), committed in order: a paid
   * answer's write is queued, not waited for (see queueStore). Only where that holds.
   */
  resultsOrderedBeforeSaves?: boolean;
}

export const DEFAULT_TIMEOUT_MS = 30_000;
/**
 * A nats-server restart (JetStream recovering its streams) takes seconds to tens of
 * seconds; a full disk needs a person. Past this, the flow stops (resumable) rather than wait.
 */
export const DEFAULT_STORE_RETRY_MS = 30_000;
/** Paid answers kept while their store fails, at most: beyond, the oldest is dropped (and logged). */
const MAX_UNSAVED = 1_000;
/** Flows whose stop cause this runner logged, at most: one line per flow, not one per task. */
const MAX_STOPS_LOGGED = 1_000;
/** The background retry of kept answers: from 1 s, doubling to 30 s while the store stays down. */
const FLUSH_FIRST_MS = 1_000;
const FLUSH_MAX_MS = 30_000;

/**
 * Failures the model answered (and was paid for) are stored under the key like a
 * success: running the same request again would give the same kind of answer. Transient
 * ones (timeout, rate limit, network) are not, so a later run tries again. Nor are the
 * permanent ones (a refused key, no credit, an unknown model): no answer was paid for, and
 * once a person fixed the cause the same key must call the model, not find the refusal.
 */
const storedFailures: ReadonlySet<string> = new Set<ModelErrorKind>(['invalid_output', 'refused', 'max_tokens']);

/**
 * Whether a stored result answers the task for good: a success, or a failure the model
 * answered. A worker also stores transient failures, so the flow waiting on the bus
 * hears of them; those are not reused, the task runs again.
 */
export const isReusableResult = (result: MicrotaskResult): boolean =>
  result.success || storedFailures.has(result.error?.kind ?? '');

/**
 * The FlowStopError a result means, when it failed for a cause no fallback helps (a refused
 * key, no credit, an unknown model): the microtask actor rejects with it instead of handing
 * the machine a fallback, and its flow ends `failed` with that code and one line.
 */
export function flowStopOf(result: MicrotaskResult): FlowStopError | undefined {
  if (result.success) return undefined;
  const code = flowStopCode(result.error?.kind);
  if (!code || !result.error) return undefined;
  // A call the breaker did not send ("not tried: ...") has the same cause as the one it did.
  const message = scrubSecrets(result.error.message.replace(/^not tried: /, '').split('\n', 1)[0]!);
  return new FlowStopError(code, message);
}

/** Resolves a result, or rejects with the FlowStopError it means. */
export const stopOnPermanentCause = (result: MicrotaskResult): MicrotaskResult => {
  const stop = flowStopOf(result);
  if (stop) throw stop;
  return result;
};

interface InFlight {
  promise: Promise<MicrotaskResult>;
  controller: AbortController;
  /** Runs waiting on this call whose own signal has not aborted. */
  waiting: number;
}

/**
 * Runs microtasks: one model call each, with a deadline enforced by AbortSignal (the HTTP
 * request is cancelled, not abandoned), a measured duration, an error kind, the task
 * type's fallback, and an idempotency key. Every outcome is a {@link MicrotaskResult},
 * with one exception: when the results store stays unavailable (after retries) the run
 * rejects with a {@link ResultsUnavailableError}, since a store failure is not a model
 * failure. A paid answer is never swapped for a fallback: it is kept in memory, retried in
 * the background, and returned to the next run of its key in this process.
 */
export class MicrotaskRunner {
  private readonly inFlight = new Map<string, InFlight>();
  /** Paid answers whose store failed, by key, oldest first. */
  private readonly unsaved = new Map<string, MicrotaskResult>();
  /** Paid answers queued to their store and not on disk yet (resultsOrderedBeforeSaves), by key. */
  private readonly queued = new Map<string, MicrotaskResult>();
  private flushTimer: NodeJS.Timeout | undefined;
  private flushDelayMs = FLUSH_FIRST_MS;
  private readonly logger: Logger;
  private readonly breaker: CircuitBreaker;
  /** Flows this runner said the stop cause of (a worker: the flow's other tasks fail the same way). */
  private readonly stopsLogged = new Set<string>();

  constructor(private readonly deps: MicrotaskDeps) {
    this.logger = deps.logger ?? silentLogger;
    this.breaker = deps.breaker ?? new CircuitBreaker();
  }

  get defaultTimeoutMs(): number {
    return this.deps.defaultTimeoutMs ?? DEFAULT_TIMEOUT_MS;
  }

  get storeRetryMs(): number {
    return this.deps.storeRetryMs ?? DEFAULT_STORE_RETRY_MS;
  }

  /** How many paid answers wait in memory for their store to come back. */
  get unsavedCount(): number {
    return this.unsaved.size;
  }

  run(rawInput: MicrotaskInput, signal?: AbortSignal): Promise<MicrotaskResult> {
    // Runs of one key at once (a duplicate delivery, a restored flow racing the stopped
    // original) share one model call. The shared call is cancelled only when every run
    // waiting on it has been cancelled.
    const key = rawInput.key;
    let entry = this.inFlight.get(key);
    if (!entry || entry.controller.signal.aborted) {
      const controller = new AbortController();
      const created: InFlight = {
        controller,
        waiting: 0,
        promise: traceMicrotask(rawInput, 'run', () => this.execute(rawInput, controller)).finally(() => {
          if (this.inFlight.get(key) === created) this.inFlight.delete(key);
        }),
      };
      this.inFlight.set(key, created);
      entry = created;
    }
    const shared = entry;
    shared.waiting++;
    if (signal) {
      const leave = () => {
        shared.waiting--;
        if (shared.waiting === 0) shared.controller.abort(signal.reason);
      };
      if (signal.aborted) leave();
      else {
        signal.addEventListener('abort', leave, { once: true });
        // Both ways: a run may reject (a results store that stays down), and this is no handler of it.
        const forget = () => signal.removeEventListener('abort', leave);
        void shared.promise.then(forget, forget);
      }
    }
    return shared.promise;
  }

  private async execute(rawInput: MicrotaskInput, controller: AbortController): Promise<MicrotaskResult> {
    const signal = controller.signal;
    const started = performance.now();
    const parsed = MicrotaskInputSchema.safeParse(rawInput);
    if (!parsed.success) {
      return this.failed(rawInput, started, {
        kind: 'invalid_request',
        message: `invalid microtask input:\n${describeIssues(parsed.error)}`,
        retryable: false,
      });
    }
    const input = parsed.data;
    const log = this.logger.child({ flowId: flowIdOf(input.key), taskId: input.key, taskType: input.taskType });
    const now = Date.now();
    const timeoutMs =
      input.deadlineAt === undefined ? (input.timeoutMs ?? this.deps.defaultTimeoutMs ?? DEFAULT_TIMEOUT_MS) : boundedDeadline(input.deadlineAt, now) - now;
    const deadlineAt = now + timeoutMs;

    // Paid for by an earlier run whose write is still on its way to disk (a store reads
    // only what is committed): returned as it is, being stored already.
    const writing = this.queued.get(input.key);
    if (writing) return { ...writing, cached: true, durationMs: 0 };
    // Paid for by an earlier run whose store failed (a flow resumed, a task delivered
    // again): returned, and stored now, instead of paying again.
    const kept = this.unsaved.get(input.key);
    if (kept) {
      log.info('answer kept in memory since its store failed; no model call');
      await this.store(input, kept, deadlineAt, log);
      return { ...kept, cached: true, durationMs: 0 };
    }

    let stored: MicrotaskResult | undefined;
    try {
      // A failed lookup is retried, never taken for "nothing stored": that would pay again
      // for a stored answer. Until the deadline (no later: the call would have no time left),
      // or for a while when it had already passed (a stored answer is still worth finding).
      stored = await retryStore(() => this.deps.results.get(input.key), {
        until: timeoutMs > 0 ? deadlineAt : Date.now() + this.storeRetryMs,
        signal,
        onRetry: (e, attempt) => {
          if (attempt === 1) log.warn({ err: e }, 'results store lookup failed; retrying');
        },
      });
    } catch (e) {
      if (signal.aborted) {
        return this.failed(input, started, { kind: 'cancelled', message: `microtask ${input.taskType} cancelled before its model call`, retryable: false });
      }
      throw new ResultsUnavailableError(
        `results store unavailable: cannot read ${this.location} for microtask ${input.taskType} (${input.key}): ${firstLine(rootStoreError(e))}`,
        { key: input.key, cause: e },
      );
    }
    // Withdrawn: its flow was cancelled while the task waited in a queue.
    if (stored && !stored.success && stored.error?.kind === 'cancelled') {
      log.info('task of a cancelled flow; no model call');
      return { ...stored, cached: true, durationMs: 0 };
    }
    if (stored && isReusableResult(stored)) {
      log.debug('result found under its key; no model call');
      return { ...stored, cached: true, durationMs: 0 };
    }
    // Stopped while looking (a daemon shutting down): do not start a call nobody waits for.
    if (signal.aborted) {
      return this.failed(input, started, { kind: 'cancelled', message: `microtask ${input.taskType} cancelled before its model call`, retryable: false });
    }

    // By own property: the name comes with the input (any NATS client's, over NATS), and a
    // program may give a plain object (`constructor` is no answer schema).
    const answers = this.deps.answers;
    const schema = input.answer === undefined || !answers || !Object.hasOwn(answers, input.answer) ? undefined : answers[input.answer];
    if (input.answer !== undefined && !schema) {
      return this.failed(input, started, {
        kind: 'unknown_answer_schema',
        message: `no answer schema named "${input.answer}" is registered (known: ${Object.keys(this.deps.answers ?? {}).join(', ') || 'none'})`,
        retryable: false,
      });
    }

    if (timeoutMs <= 0) {
      return this.failed(input, started, { kind: 'timeout', message: `microtask ${input.taskType} timed out: its deadline had passed`, retryable: false });
    }
    const tripped = this.breaker.check();
    if (tripped) return this.failed(input, started, tripped);

    // The deadline aborts the run's own controller (the one its cancellation aborts): past
    // this point the call is all the run waits on, and a run aborted is never shared again.
    // A controller per call chained to it cost 5% of the floor's CPU (AbortSignal.any, a
    // weakly-held signal per call, twice that).
    const timer = setTimeout(
      () => controller.abort(new DOMException(`microtask ${input.taskType} timed out after ${timeoutMs} ms`, 'TimeoutError')),
      Math.max(0, deadlineAt - Date.now()),
    );

    log.debug({ timeoutMs }, 'microtask started');
    let result: MicrotaskResult;
    try {
      const answer = await this.deps.model.call({
        system: input.system,
        prompt: input.prompt,
        data: input.data,
        schema,
        schemaName: input.answer,
        signal,
        maxTokens: input.maxTokens,
        model: input.model,
      });
      result = {
        success: true,
        taskType: input.taskType,
        key: input.key,
        result: answer.value,
        durationMs: performance.now() - started,
        usage: answer.usage,
        model: answer.model,
        stopReason: answer.stopReason,
        requestId: answer.requestId,
        cached: false,
      };
      this.breaker.reset();
    } catch (e) {
      if (isModelError(e)) this.breaker.record(e);
      const error: MicrotaskError = isModelError(e)
        ? {
            kind: e.kind,
            message: e.message,
            retryable: e.retryable,
            ...(e.status !== undefined ? { status: e.status } : {}),
            ...(e.requestId !== undefined ? { requestId: e.requestId } : {}),
            ...(e.retryAfterMs !== undefined ? { retryAfterMs: e.retryAfterMs } : {}),
          }
        : // A ModelError is scrubbed when made; anything else (a library under the model port) here,
          // before the result goes to a store, a snapshot, a journal or an answer.
          { kind: 'unknown', message: scrubSecrets(e instanceof Error ? e.message : String(e)), retryable: false };
      // A call that failed still counts as one against a budget of calls; its tokens are
      // known only when the model answered (a cut-off or invalid answer).
      const usage = (isModelError(e) ? e.usage : undefined) ?? { ...zeroUsage(), calls: 1 };
      result = this.failed(input, started, error, usage);
    } finally {
      clearTimeout(timer);
    }
    // Stored before the flow hears of it: a crash after this point costs no second call (or,
    // where the store's writes are ordered before the flow's saves, queued before it hears of
    // it: no save of a later step lands without it). Outside the call's try: a store that
    // fails is not a model failure.
    if (isReusableResult(result) && !this.queueStore(input, result, log)) await this.store(input, result, deadlineAt, log);
    if (result.success) log.info({ durationMs: Math.round(result.durationMs), usage: result.usage }, 'microtask done');
    else if (flowStopCode(result.error?.kind)) this.logStop(input.key, log, result);
    else log.warn({ durationMs: Math.round(result.durationMs), error: result.error }, 'microtask failed; fallback used');
    return result;
  }

  /** Once per flow at warn (its tasks in flight fail alike, and its flow stops on the first); the others at debug. */
  private logStop(key: string, log: Logger, result: MicrotaskResult): void {
    const flowId = flowIdOf(key);
    const first = !this.stopsLogged.has(flowId);
    if (first) {
      this.stopsLogged.add(flowId);
      if (this.stopsLogged.size > MAX_STOPS_LOGGED) this.stopsLogged.delete(this.stopsLogged.values().next().value!);
    }
    const fields = { durationMs: Math.round(result.durationMs), error: result.error };
    const line = `microtask failed: ${result.error?.message ?? 'no cause given'}; no fallback helps, its flow stops`;
    if (first) log.warn(fields, line);
    else log.debug(fields, line);
  }

  private get location(): string {
    return this.deps.results.location ?? 'the results store';
  }

  /**
   * Stores a paid result, retrying with backoff for `storeRetryMs` (at least until the
   * deadline). Kept in memory from its first failure until it is stored; when the store
   * stays down, rejects with a ResultsUnavailableError carrying its usage, and a
   * background retry goes on storing it.
   */
  private async store(input: { key: string; taskType: string }, result: MicrotaskResult, deadlineAt: number, log: Logger): Promise<void> {
    const key = input.key;
    try {
      await retryStore(() => this.deps.results.put(key, result), {
        until: Math.max(deadlineAt, Date.now() + this.storeRetryMs),
        onRetry: (e, attempt) => {
          if (attempt > 1) return;
          this.keep(key, result);
          log.warn({ err: e, usage: result.usage }, 'could not store a paid answer; it is kept in memory and its store retried');
        },
      });
    } catch (e) {
      this.keep(key, result);
      this.scheduleFlush();
      log.error({ err: e, usage: result.usage }, 'results store unavailable: the flow stops; the paid answer is kept in memory');
      throw new ResultsUnavailableError(
        `${describeStoreError(rootStoreError(e), this.location)} (the paid answer of microtask ${input.taskType} ${key} is held by this process until the store takes it: a resume in another process pays for it again)`,
        { key, usage: result.usage, cause: e },
      );
    }
    if (this.unsaved.delete(key)) log.info('a kept answer was stored');
  }

  /**
   * Queues the answer's write where the results store and the flows' saves share one write
   * queue (resultsOrderedBeforeSaves): the flow goes on without waiting for the commit, and
   * its next save, made after, lands no earlier, so no crash leaves a step past an answer
   * that is not on disk (a crash before the commit loses the answer as it did when the flow
   * waited: the window is the same commit). A write that fails keeps the answer in memory,
   * as a failed `store` does; the flow's next save meets the same cause and stops the flow,
   * resumable. False when the store cannot queue it now (the caller stores it and waits).
   */
  private queueStore(input: { key: string; taskType: string }, result: MicrotaskResult, log: Logger): boolean {
    if (!this.deps.resultsOrderedBeforeSaves || !this.deps.results.queue) return false;
    const key = input.key;
    let written: Promise<void> | undefined;
    try {
      written = this.deps.results.queue(key, result);
    } catch (e) {
      written = Promise.reject(e);
    }
    if (!written) return false;
    this.queued.set(key, result);
    written.then(
      () => {
        if (this.queued.get(key) === result) this.queued.delete(key);
      },
      (e: unknown) => {
        if (this.queued.get(key) === result) this.queued.delete(key);
        this.keep(key, result);
        this.scheduleFlush();
        log.error({ err: e, usage: result.usage }, 'could not store a paid answer: it is kept in memory and its store retried; the flow stops at its next save');
      },
    );
    return true;
  }

  private keep(key: string, result: MicrotaskResult): void {
    this.unsaved.delete(key); // re-inserted last: the oldest is first
    this.unsaved.set(key, result);
    if (this.unsaved.size <= MAX_UNSAVED) return;
    const [oldest] = this.unsaved.keys();
    this.unsaved.delete(oldest!);
    this.logger.error({ taskId: oldest, max: MAX_UNSAVED }, 'too many paid answers wait for the results store: the oldest is dropped, and will be paid again');
  }

  /**
   * Stores the kept answers in the background, so they land once the store is back even
   * if no run of their key comes (a task whose deliveries ran out, a flow resumed later).
   */
  private scheduleFlush(): void {
    if (this.flushTimer || this.unsaved.size === 0) return;
    this.flushTimer = setTimeout(() => void this.flushUnsaved(), this.flushDelayMs);
    // Nothing to keep a process alive for: an exiting process loses its memory anyway.
    this.flushTimer.unref();
  }

  private async flushUnsaved(): Promise<void> {
    let failed = false;
    for (const [key, result] of [...this.unsaved]) {
      // A run of this key stores it itself.
      if (this.inFlight.has(key)) continue;
      try {
        await this.deps.results.put(key, result);
      } catch {
        failed = true;
        break;
      }
      if (this.unsaved.get(key) === result) this.unsaved.delete(key);
      this.logger.info({ taskId: key }, 'a kept answer was stored');
    }
    this.flushDelayMs = failed ? Math.min(this.flushDelayMs * 2, FLUSH_MAX_MS) : FLUSH_FIRST_MS;
    this.flushTimer = undefined;
    this.scheduleFlush();
  }

  private failed(input: MicrotaskInput, started: number, error: MicrotaskError, usage = zeroUsage()): MicrotaskResult {
    return {
      success: false,
      taskType: input.taskType ?? 'unknown',
      key: input.key ?? 'unknown',
      error,
      fallback: fallbackFor(this.deps.fallbacks, input, error, this.logger),
      durationMs: performance.now() - started,
      usage,
      cached: false,
    };
  }
}

/**
 * Gives a microtask actor its absolute deadline when it is created, in its input. The
 * input is part of the flow's persisted snapshot, so a microtask run again after a
 * restore keeps the deadline it had (an `after` delay, or a timer started in the
 * promise, would start from zero).
 */
export function withDeadline<L extends PromiseActorLogic<MicrotaskResult, MicrotaskInput>>(logic: L, defaultTimeoutMs: number): L {
  return {
    ...logic,
    getInitialSnapshot: (scope, input) =>
      logic.getInitialSnapshot(
        scope,
        { ...input, deadlineAt: input.deadlineAt === undefined ? Date.now() + (input.timeoutMs ?? defaultTimeoutMs) : boundedDeadline(input.deadlineAt) },
      ),
  };
}

/**
 * The microtask as XState actor logic. The actor's own signal (aborted when the actor is
 * stopped, e.g. its flow is cancelled) cancels the model call too. A failure no fallback
 * helps (a refused key, no credit, an unknown model) rejects with a FlowStopError: the flow
 * host ends the flow with it before the machine falls back.
 */
export function createMicrotaskLogic(runner: MicrotaskRunner) {
  return withDeadline(
    fromPromise<MicrotaskResult, MicrotaskInput>(({ input, signal }) => runner.run(input, signal).then(stopOnPermanentCause)),
    runner.defaultTimeoutMs,
  );
}
