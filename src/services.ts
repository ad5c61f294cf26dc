import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import type { InspectionEvent } from 'xstate';
import { CircuitBreaker } from './actors/CircuitBreaker.js';
import { MicrotaskRunner } from './actors/microtask.js';
import { createRemoteMicrotaskLogic } from './actors/remoteMicrotask.js';
import { createRemoteTaskLogic } from './actors/remoteTask.js';
import { TaskRunner } from './actors/task.js';
import { ResultsWatch } from './bus/ResultsWatch.js';
import { type Bus, type WorkQueue } from './bus/Bus.js';
import { KvResultsStore } from './bus/KvResultsStore.js';
import { subjects } from './bus/subjects.js';
import type { Config } from './config.js';
import { Daemon } from './daemon/Daemon.js';
import { answersWith, fallbacksWith, provideFlows, tasksWith } from './flows.js';
import { KvLeaseBoard } from './leases.js';
import type { Logger } from './log.js';
import { toolsDir } from './runFlow.js';
import { chooseModel, type ModelChoice } from './runtime.js';
import { natsJournal, natsSnapshotStore, retentionMs } from './composition.js';
import { startWorker } from './worker.js';
import type { Metrics } from './ops/metrics.js';
import { teeJournal } from './journal/tee.js';
import { withFlowSpans } from './ops/tracing.js';

/**
 * The long-running services of NATS mode: the work queue and results bucket, the workers and
 * the daemon. What the mode is, and the stores of each, is decided in src/composition.ts.
 */
export async function taskQueue(bus: Bus, config: Config): Promise<WorkQueue> {
  const names = subjects(config.MICROTASK_SUBJECT_PREFIX);
  return bus.workQueue(names.taskQueue, {
    ackWaitMs: config.MICROTASK_ACK_WAIT_MS,
    maxDeliver: config.MICROTASK_MAX_DELIVER,
    deadLetterSubject: names.deadLetters,
    // A task nobody took for that long has no flow waiting for it (its deadline is far shorter).
    maxAgeMs: retentionMs(config),
  });
}


/**
 * The results bucket: a result is read by its flow within its deadline (or again when a
 * flow resumes), so one older than the retention is only kept to save a model call for a
 * flow stopped that long; it goes with the retention.
 */
export const resultsBucket = (bus: Bus, config: Config) =>
  bus.keyValue(subjects(config.MICROTASK_SUBJECT_PREFIX).resultsBucket, { maxAgeMs: retentionMs(config) });

/**
 * A worker on the bus: the model from the configuration, without its own retries (the
 * queue owns them), unless one is given (the benchmark's instant model).
 */
export async function startWorkerService(bus: Bus, config: Config, logger: Logger, given?: ModelChoice, extra: { metrics?: Metrics } = {}) {
  const { model: chosen, description } = given ?? (await chooseModel({ ...config, MICROTASK_MAX_RETRIES: 0 }));
  const { metrics } = extra;
  const model = metrics ? metrics.meterModel(chosen, config.MICROTASK_MODEL) : chosen;
  const names = subjects(config.MICROTASK_SUBJECT_PREFIX);
  const results = new KvResultsStore(await resultsBucket(bus, config));
  // The queue retries a transient failure after a backoff of 1 s or more; the breaker only
  // spares the other tasks of a burst, so it must close before the first retry comes.
  const runner = new MicrotaskRunner({
    model,
    results,
    // The built-in schemas and fallbacks, and those of the user's module (--flows): its flows' tasks come here too.
    answers: answersWith(),
    fallbacks: fallbacksWith(),
    logger,
    breaker: new CircuitBreaker(500),
    defaultTimeoutMs: config.MICROTASK_TIMEOUT_MS,
  });
  const queue = await taskQueue(bus, config);
  metrics?.watchQueue(queue);
  const consumer = await startWorker({
    queue: metrics ? metrics.meterQueue(queue) : queue,
    runner,
    // The module's tasks (--flows): jobs of kind 'task' on the same queue, their results in the same bucket.
    tasks: new TaskRunner({ tasks: tasksWith(), results, logger, defaultTimeoutMs: config.MICROTASK_TIMEOUT_MS }),
    results,
    announce: (key, result) => bus.publish(names.taskResult(key), JSON.stringify(result)),
    concurrency: config.MICROTASK_WORKER_CONCURRENCY,
    heartbeatMs: Math.max(100, Math.floor(config.MICROTASK_ACK_WAIT_MS / 3)),
    logger,
  });
  logger.info({ concurrency: config.MICROTASK_WORKER_CONCURRENCY }, `worker taking tasks; model: ${description}`);
  return consumer;
}

/**
 * The daemon on NATS: its flows' microtasks and tasks go to the workers through the task
 * queue, their results watched in the results bucket; snapshots in KV, leases so that one
 * daemon takes over the flows of another that died.
 */
export async function startDaemonService(
  bus: Bus,
  config: Config,
  logger: Logger,
  extra: { inspect?: (event: InspectionEvent) => void; journal?: boolean; metrics?: Metrics } = {},
) {
  // An in-process bus reaches no client: embedded flows run in `microtask run` or the library (src/composition.ts).
  if (bus.transport !== 'nats') throw new Error(`the daemon serves NATS, not a ${bus.transport} bus`);
  const { metrics } = extra;
  const queue = await taskQueue(bus, config);
  metrics?.watchQueue(queue);
  const results = await resultsBucket(bus, config);
  const remote = { bus, queue, results, resultsWatch: new ResultsWatch(results), defaultTimeoutMs: config.MICROTASK_TIMEOUT_MS, logger };
  // A task no worker answered in time falls back here, as the user's module says for its task types.
  const microtask = createRemoteMicrotaskLogic({ ...remote, fallbacks: fallbacksWith() });
  const task = createRemoteTaskLogic({ ...remote, tasks: tasksWith() });
  const store = await natsSnapshotStore(bus, config, logger);
  // With traces on, the journal also opens and ends each flow's span.
  const stored = extra.journal === false ? undefined : withFlowSpans(await natsJournal(bus, config, logger));
  // The journal sees every flow's start, transitions, saves, microtasks and end: the flow metrics come from there.
  const journal = stored && metrics ? teeJournal(stored, (entry) => metrics.observe(entry)) : stored;
  const before = new Date(Date.now() - retentionMs(config));
  const pruned = await store.prune(before);
  const journals = (await journal?.prune(before)) ?? 0;
  if (pruned || journals) logger.info({ pruned, journals }, 'old finished flows pruned');
  const daemon = new Daemon({
    bus,
    flows: provideFlows({ microtask, task }),
    store,
    logger,
    outRoot: toolsDir(config.MICROTASK_STATE_DIR),
    ...(journal ? { journal } : {}),
    ...(extra.inspect ? { inspect: extra.inspect } : {}),
    retentionMs: retentionMs(config),
    subjectPrefix: config.MICROTASK_SUBJECT_PREFIX,
    // Daemons sharing NATS KV hold leases, so one takes over the flows of another that died.
    lease: {
      owner: config.MICROTASK_DAEMON_ID ?? `${hostname()}:${process.pid}:${randomBytes(3).toString('hex')}`,
      durationMs: config.MICROTASK_LEASE_MS,
      // One heartbeat per daemon, and an index of the flows each holds (not a renewal per flow).
      // No max age: an index key lives as long as its flow waits; each goes when its flow ends or is taken over.
      board: new KvLeaseBoard(await bus.keyValue(subjects(config.MICROTASK_SUBJECT_PREFIX).leasesBucket, { maxAgeMs: 0 })),
    },
  });
  metrics?.watchFlowsAsleep(daemon);
  await daemon.start();
  return daemon;
}
