import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import type { InspectionEvent } from 'xstate';
import { CircuitBreaker } from './actors/CircuitBreaker.js';
import { createMicrotaskLogic, MicrotaskRunner } from './actors/microtask.js';
import { createRemoteMicrotaskLogic } from './actors/remoteMicrotask.js';
import { createRemoteTaskLogic } from './actors/remoteTask.js';
import { TaskRunner } from './actors/task.js';
import { ResultsWatch } from './bus/ResultsWatch.js';
import { BusError, type Bus, type WorkQueue } from './bus/Bus.js';
import { KvResultsStore } from './bus/KvResultsStore.js';
import { MemoryBus } from './bus/MemoryBus.js';
import { connectNatsBus } from './bus/NatsBus.js';
import { subjects } from './bus/subjects.js';
import { UsageError } from './UsageError.js';
import type { Config } from './config.js';
import { Daemon } from './daemon/Daemon.js';
import { answersWith, embeddedTaskLogic, fallbacksWith, provideFlows, tasksWith } from './flows.js';
import { BusJournal } from './journal/BusJournal.js';
import type { Journal } from './journal/Journal.js';
import { LmdbJournal } from './journal/LmdbJournal.js';
import { KvSnapshotStore } from './persistence/KvSnapshotStore.js';
import { LmdbSnapshotStore } from './persistence/LmdbSnapshotStore.js';
import { LmdbStore } from './persistence/LmdbStore.js';
import { LmdbInbox } from './inbox/LmdbInbox.js';
import { KvLeaseBoard } from './leases.js';
import { BusInbox } from './inbox/BusInbox.js';
import type { Inbox } from './inbox/Inbox.js';
import type { SnapshotStore } from './persistence/SnapshotStore.js';
import type { Logger } from './log.js';
import { toolsDir } from './runFlow.js';
import { chooseModel, createRuntime, type ModelChoice } from './runtime.js';
import { logJournalError, moveAsideOnCorrupt } from './composition.js';
import { startWorker } from './worker.js';
import type { Metrics } from './ops/metrics.js';
import { teeJournal } from './journal/tee.js';
import { withFlowSpans } from './ops/tracing.js';

/**
 * Builds the long-running services from the configuration: the bus (NATS when NATS_URL is
 * set, in-process otherwise), the work queue and results bucket, the daemon and workers.
 */
export async function connectBus(config: Config, logger: Logger, role: string): Promise<Bus> {
  if (!config.NATS_URL) return new EmbeddedBus({ subjectPrefix: config.MICROTASK_SUBJECT_PREFIX });
  const servers = config.NATS_URL.join(', ');
  // A one-shot command fails fast on an unreachable server; a service waits for it, saying so.
  const oneShot = role === 'cli';
  logger.info({ servers }, 'connecting to NATS');
  const waiting = oneShot
    ? undefined
    : setInterval(() => logger.warn({ servers }, `still waiting for NATS at ${servers}: is it running and reachable?`), 5_000);
  try {
    return await connectNats(config, logger, role, oneShot);
  } catch (e) {
    if (!(e instanceof BusError) || e.code !== 'CONNECTION') throw e;
    // Wrong credentials are no outage: every role says so at once, naming the variables to fix.
    if (e.cause instanceof Error && e.cause.name === 'AuthorizationError') throw credentialsRefused(config, servers, e.cause.message);
    if (oneShot) throw new UsageError(`cannot reach NATS at ${servers} (${e.message}); check NATS_URL`, 'NATS_UNREACHABLE');
    // A service waits for an unreachable server; what ends the wait (no JetStream, an unreadable creds file) is the environment's to fix.
    throw new UsageError(e.message, 'NATS_UNAVAILABLE');
  } finally {
    if (waiting) clearInterval(waiting);
  }
}

/** The server refused whatever credentials were given (or asked for some): which variables to check, never their secret values. */
function credentialsRefused(config: Config, servers: string, reason: string): UsageError {
  const tried = [
    config.NATS_TOKEN ? ['the token in NATS_TOKEN', 'NATS_TOKEN'] : undefined,
    config.NATS_USER ? [`the credentials for ${config.NATS_USER}`, 'NATS_USER/NATS_PASSWORD'] : undefined,
    config.NATS_NKEY_SEED ? ['the nkey in NATS_NKEY_SEED', 'NATS_NKEY_SEED'] : undefined,
    config.NATS_CREDS ? [`the credentials in ${config.NATS_CREDS}`, 'NATS_CREDS'] : undefined,
  ].filter((t): t is [string, string] => t !== undefined);
  const message = tried.length
    ? `NATS refused ${tried.map(([what]) => what).join(' and ')} at ${servers} (${reason}): check ${tried.map(([, variable]) => variable).join(', ')}`
    : `NATS at ${servers} asks for credentials (${reason}): set NATS_USER and NATS_PASSWORD, NATS_TOKEN, NATS_NKEY_SEED or NATS_CREDS`;
  return new UsageError(message, 'NATS_AUTH');
}

function connectNats(config: Config, logger: Logger, role: string, oneShot: boolean) {
  return connectNatsBus({
    ...(oneShot ? { waitOnFirstConnect: false, maxReconnectAttempts: 0, connectTimeoutMs: 3_000 } : {}),
    servers: config.NATS_URL!,
    name: `microtask-${role}@${hostname()}`,
    subjectPrefix: config.MICROTASK_SUBJECT_PREFIX,
    replicas: config.MICROTASK_STREAM_REPLICAS,
    ...(config.NATS_TOKEN ? { token: config.NATS_TOKEN } : {}),
    ...(config.NATS_USER ? { user: config.NATS_USER, pass: config.NATS_PASSWORD ?? '' } : {}),
    ...(config.NATS_NKEY_SEED ? { nkeySeed: config.NATS_NKEY_SEED } : {}),
    ...(config.NATS_CREDS ? { credsFile: config.NATS_CREDS } : {}),
    ...(config.NATS_TLS_CA || config.NATS_TLS_CERT
      ? { tls: { caFile: config.NATS_TLS_CA, certFile: config.NATS_TLS_CERT, keyFile: config.NATS_TLS_KEY } }
      : {}),
    onStatus: (status) => {
      if (status.type === 'error') logger.error({ err: status.error }, 'NATS connection error');
      else if (status.type === 'disconnect' || status.type === 'reconnecting') logger.warn({ nats: status }, 'NATS disconnected; reconnecting');
      else if (status.type === 'reconnect') logger.info({ nats: status }, 'NATS reconnected');
      else logger.debug({ nats: status }, 'NATS status');
    },
  });
}

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

const retentionMs = (config: Config) => config.MICROTASK_RETENTION_HOURS * 3_600_000;

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
 * The in-process bus of embedded mode. The state directory's database handles opened for
 * a command or a daemon on it are released when it closes (the database closes with the
 * process's last handle, its writes in flight committed first).
 */
class EmbeddedBus extends MemoryBus {
  private readonly releases: Array<() => Promise<unknown>> = [];

  /** Runs `release` when the bus closes (for a bus that is not an EmbeddedBus, never: the process's exit does). */
  static onClose(bus: Bus, release: () => Promise<unknown>) {
    if (bus instanceof EmbeddedBus) bus.releases.push(release);
  }

  override async close(): Promise<void> {
    await super.close();
    for (const release of this.releases.splice(0).reverse()) await release();
  }
}

/** The snapshot store of the mode: NATS KV when the bus is NATS (shared by daemons), the embedded database otherwise. */
export async function snapshotStore(bus: Bus, config: Config, logger: Logger): Promise<SnapshotStore> {
  const options = moveAsideOnCorrupt(logger, () => store);
  let store: SnapshotStore;
  // No max age: it would drop a running flow's snapshot too (the bucket's age is per key,
  // since its last write, and a flow waiting longer than the retention is not written, or
  // no daemon runs it); finished flows are pruned instead.
  if (bus.transport === 'nats') store = new KvSnapshotStore(await bus.keyValue(subjects(config.MICROTASK_SUBJECT_PREFIX).snapshotsBucket, { maxAgeMs: 0 }), options);
  else {
    const db = await LmdbStore.open(config.MICROTASK_STATE_DIR);
    EmbeddedBus.onClose(bus, () => db.close());
    store = await LmdbSnapshotStore.open(db, options);
  }
  return store;
}

/** Where events sent to flows are kept in this mode: a JetStream stream with NATS, the embedded database otherwise. */
export async function inboxFor(bus: Bus, config: Config, logger: Logger): Promise<Inbox> {
  const onError = (message: string) => logger.warn({ inbox: true }, message);
  if (bus.transport === 'nats') {
    return BusInbox.open(bus, { subjectPrefix: config.MICROTASK_SUBJECT_PREFIX, retentionMs: config.MICROTASK_RETENTION_HOURS * 3_600_000, onError });
  }
  const db = await LmdbStore.open(config.MICROTASK_STATE_DIR);
  EmbeddedBus.onClose(bus, () => db.close());
  return new LmdbInbox(db, { onError });
}

/** The journal of the mode: a JetStream stream with NATS (any machine reads it), the embedded database otherwise. */
export async function journalFor(bus: Bus, config: Config, logger: Logger): Promise<Journal> {
  const onError = logJournalError(logger);
  if (bus.transport === 'nats') return BusJournal.open(bus, { subjectPrefix: config.MICROTASK_SUBJECT_PREFIX, retentionMs: retentionMs(config), onError });
  const journal = await LmdbJournal.open(config.MICROTASK_STATE_DIR, { onError });
  EmbeddedBus.onClose(bus, () => journal.close());
  return journal;
}

/**
 * The daemon on the bus. With NATS its flows' microtasks go to the workers through the
 * task queue; embedded, they run in this process.
 */
export async function startDaemonService(
  bus: Bus,
  config: Config,
  logger: Logger,
  extra: { inspect?: (event: InspectionEvent) => void; journal?: boolean; metrics?: Metrics } = {},
) {
  const { metrics } = extra;
  // Embedded: microtasks run in this process, their results kept on disk (the CLI's runtime).
  const runtime =
    bus.transport === 'nats'
      ? undefined
      : await createRuntime(config, logger, { answers: answersWith(), fallbacks: fallbacksWith(), ...(metrics ? { wrapModel: (model) => metrics.meterModel(model, config.MICROTASK_MODEL) } : {}) });
  if (runtime) EmbeddedBus.onClose(bus, () => runtime.close());
  // With NATS, microtasks and the module's tasks go to the workers on one queue, their results watched in one bucket.
  const remote = runtime
    ? undefined
    : await (async () => {
        const queue = await taskQueue(bus, config);
        metrics?.watchQueue(queue);
        const results = await resultsBucket(bus, config);
        return { bus, queue, results, resultsWatch: new ResultsWatch(results), defaultTimeoutMs: config.MICROTASK_TIMEOUT_MS, logger };
      })();
  const microtask = remote
    ? createRemoteMicrotaskLogic({
        ...remote,
        subjectPrefix: config.MICROTASK_SUBJECT_PREFIX,
        // A task no worker answered in time falls back here, as the user's module says for its task types.
        fallbacks: fallbacksWith(),
      })
    : createMicrotaskLogic(runtime!.runner);
  // The module's tasks: embedded, run here, their results kept with the microtasks'; with NATS, on the workers.
  const task = remote
    ? createRemoteTaskLogic({ ...remote, tasks: tasksWith() })
    : embeddedTaskLogic({ results: runtime!.results, logger, defaultTimeoutMs: config.MICROTASK_TIMEOUT_MS });
  // Embedded: the runtime's stores, in the state directory's database.
  const store = runtime?.store ?? (await snapshotStore(bus, config, logger));
  // With traces on, the journal also opens and ends each flow's span (the runtime's does already).
  const stored = extra.journal === false ? undefined : (runtime?.journal ?? withFlowSpans(await journalFor(bus, config, logger)));
  // The journal sees every flow's start, transitions, saves, microtasks and end: the flow metrics come from there.
  const journal = stored && metrics ? teeJournal(stored, (entry) => metrics.observe(entry)) : stored;
  const before = new Date(Date.now() - config.MICROTASK_RETENTION_HOURS * 3_600_000);
  const pruned = await store.prune(before);
  const resultFiles = (await runtime?.results.prune(before)) ?? 0;
  const journals = (await journal?.prune(before)) ?? 0;
  const requestIds = (await runtime?.db.pruneRequests(before)) ?? 0;
  // Embedded: events sent to flows kept in the database, where `microtask send` in another process puts them.
  const inbox = runtime ? new LmdbInbox(runtime.db, { onError: (message) => logger.warn({ inbox: true }, message) }) : undefined;
  const events = (await inbox?.prune(before)) ?? 0;
  if (pruned || resultFiles || journals || requestIds || events) logger.info({ pruned, resultFiles, journals, requestIds, events }, 'old finished flows pruned');
  const daemon = new Daemon({
    bus,
    flows: provideFlows({ microtask, task }),
    store,
    logger,
    outRoot: toolsDir(config.MICROTASK_STATE_DIR),
    ...(journal ? { journal } : {}),
    // Embedded: request ids claimed in the database, so that two processes on one state directory agree.
    ...(runtime ? { requestIds: { claim: (requestId: string, flowId: string) => runtime.db.claimRequest(requestId, flowId), release: (requestId: string, flowId: string) => runtime.db.releaseRequest(requestId, flowId) }, storeLocation: runtime.storeLocation } : {}),
    ...(extra.inspect ? { inspect: extra.inspect } : {}),
    ...(inbox ? { inbox } : {}),
    retentionMs: config.MICROTASK_RETENTION_HOURS * 3_600_000,
    subjectPrefix: config.MICROTASK_SUBJECT_PREFIX,
    // Daemons sharing NATS KV hold leases, so one takes over the flows of another that died.
    ...(bus.transport === 'nats'
      ? {
          lease: {
            owner: config.MICROTASK_DAEMON_ID ?? `${hostname()}:${process.pid}:${randomBytes(3).toString('hex')}`,
            durationMs: config.MICROTASK_LEASE_MS,
            // One heartbeat per daemon, and an index of the flows each holds (not a renewal per flow).
            // No max age: an index key lives as long as its flow waits; each goes when its flow ends or is taken over.
            board: new KvLeaseBoard(await bus.keyValue(subjects(config.MICROTASK_SUBJECT_PREFIX).leasesBucket, { maxAgeMs: 0 })),
          },
        }
      : {}),
  });
  await daemon.start();
  return daemon;
}
