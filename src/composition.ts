import { hostname } from 'node:os';
import { join } from 'node:path';
import { BusError, type Bus } from './bus/Bus.js';
import { connectNatsBus } from './bus/NatsBus.js';
import { subjects } from './bus/subjects.js';
import type { Config } from './config.js';
import { BusInbox } from './inbox/BusInbox.js';
import type { Inbox } from './inbox/Inbox.js';
import { LmdbInbox } from './inbox/LmdbInbox.js';
import { BusJournal } from './journal/BusJournal.js';
import type { Journal, JournalError } from './journal/Journal.js';
import { LmdbJournal } from './journal/LmdbJournal.js';
import type { Logger } from './log.js';
import { withFlowSpans } from './ops/tracing.js';
import { KvSnapshotStore } from './persistence/KvSnapshotStore.js';
import { LmdbResultsStore } from './persistence/LmdbResultsStore.js';
import { LmdbSnapshotStore } from './persistence/LmdbSnapshotStore.js';
import { LmdbStore } from './persistence/LmdbStore.js';
import type { SnapshotStore, SnapshotStoreOptions } from './persistence/SnapshotStore.js';
import { UsageError } from './UsageError.js';

/**
 * The composition root: whether this process works embedded or over NATS is decided here,
 * from NATS_URL, and nowhere else; this file builds each mode's stores (snapshots, journal,
 * inbox, results) for the CLI, the daemon, the worker, the bench and the library alike.
 *
 * - embedded: one process runs its flows (`microtask run`, `resume`, the library's
 *   orchestrator), their state in one lmdb database under MICROTASK_STATE_DIR, which other
 *   processes on the machine open too (`show`, `cancel`, `send`, `inspect`);
 * - nats: daemons host flows and workers run their microtasks; state in JetStream (KV for
 *   snapshots, leases and results, streams for the journal and inboxes), clients anywhere.
 *
 * There is no embedded daemon: a daemon is what clients reach over the bus, and an
 * in-process bus reaches no one. `microtask dev` starts a nats-server for one.
 */
export type Mode = 'embedded' | 'nats';

export const modeOf = (config: Config): Mode => (config.NATS_URL ? 'nats' : 'embedded');

/** A journal write that failed costs the flow nothing; say so in the logs. */
export const logJournalError = (logger: Logger) => (error: JournalError) => logger.warn({ code: error.code, err: error.cause }, error.message);

/** Logs a corrupt snapshot and moves it aside (with its reason), so it never blocks the other flows. */
export function moveAsideOnCorrupt(logger: Logger, store: () => SnapshotStore): SnapshotStoreOptions {
  return {
    onCorrupt: (error) => {
      logger.error({ flowId: error.flowId, reason: error.reason }, 'corrupt snapshot: moved aside');
      void store().moveAside(error.flowId, error.reason).catch(() => undefined);
    },
  };
}

/** How long finished flows, their journals and results are kept (MICROTASK_RETENTION_HOURS), in ms. */
export const retentionMs = (config: Config) => config.MICROTASK_RETENTION_HOURS * 3_600_000;

// ---------------------------------------------------------------- embedded

/**
 * Embedded mode's state: results, snapshots (with every step), request ids, the inbox and the
 * journal in one database under the state directory (lmdb: the writes of a turn share one
 * commit and one fsync; several processes may open it). What earlier versions wrote there is read.
 */
export interface EmbeddedState {
  db: LmdbStore;
  store: SnapshotStore;
  results: LmdbResultsStore;
  journal: Journal;
  inbox: Inbox;
  /**
   * Results and snapshots are one database, whose writes commit in the order made: the
   * runner may queue a paid answer's write instead of waiting for it (MicrotaskDeps).
   */
  resultsOrderedBeforeSaves: true;
  /** Waits for the journal's writes, then releases the database (it closes with this process's last handle). */
  close(): Promise<void>;
}

export async function openEmbeddedState(config: Config, logger: Logger): Promise<EmbeddedState> {
  const db = await LmdbStore.open(config.MICROTASK_STATE_DIR);
  try {
    const results = await LmdbResultsStore.open(db);
    const store: SnapshotStore = await LmdbSnapshotStore.open(db, moveAsideOnCorrupt(logger, () => store));
    // With traces on, it also opens and ends each flow's span.
    const journal = withFlowSpans(await LmdbJournal.open(config.MICROTASK_STATE_DIR, { onError: logJournalError(logger) }));
    const inbox = new LmdbInbox(db, { onError: (message) => logger.warn({ inbox: true }, message) });
    const close = async () => {
      await journal.close();
      await db.close();
    };
    return { db, store, results, journal, inbox, resultsOrderedBeforeSaves: true, close };
  } catch (e) {
    await db.close();
    throw e;
  }
}

// ---------------------------------------------------------------- NATS

/** Why a role cannot run without NATS, and what to do instead: one line. */
const natsRequired: Record<string, string> = {
  daemon:
    'the daemon serves flows to clients over NATS: set NATS_URL (e.g. nats://127.0.0.1:4222), or run `microtask dev`, which starts a nats-server, a daemon and a worker; `microtask run` runs a flow embedded, in its own process',
  worker: 'a worker takes microtasks from the NATS work queue: set NATS_URL (e.g. nats://127.0.0.1:4222), or run `microtask dev`',
};

/** A role that only exists over NATS (the daemon, a worker) refuses to start without it, saying what to do instead. */
export function requireNats(config: Config, role: 'daemon' | 'worker'): void {
  if (!config.NATS_URL) throw new UsageError(natsRequired[role]!, 'NATS_REQUIRED');
}

/**
 * The connection to NATS (NATS_URL). A one-shot command (`cli`) fails fast on an unreachable
 * server; a service waits for it, saying so every 5 s.
 */
export async function connectBus(config: Config, logger: Logger, role: string): Promise<Bus> {
  if (!config.NATS_URL) throw new UsageError(natsRequired[role] ?? `${role} needs NATS: set NATS_URL (e.g. nats://127.0.0.1:4222)`, 'NATS_REQUIRED');
  const servers = config.NATS_URL.join(', ');
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

/**
 * NATS mode's snapshot store, in KV (shared by the daemons). No max age: it would drop a
 * running flow's snapshot too (the bucket's age is per key, since its last write, and a flow
 * waiting longer than the retention is not written); finished flows are pruned instead.
 */
export async function natsSnapshotStore(bus: Bus, config: Config, logger: Logger): Promise<SnapshotStore> {
  const store: SnapshotStore = new KvSnapshotStore(
    await bus.keyValue(subjects(config.MICROTASK_SUBJECT_PREFIX).snapshotsBucket, { maxAgeMs: 0 }),
    moveAsideOnCorrupt(logger, () => store),
  );
  return store;
}

/** NATS mode's journal: a JetStream stream any machine reads. */
export const natsJournal = (bus: Bus, config: Config, logger: Logger): Promise<Journal> =>
  BusJournal.open(bus, { subjectPrefix: config.MICROTASK_SUBJECT_PREFIX, retentionMs: retentionMs(config), onError: logJournalError(logger) });

/** NATS mode's inbox: events sent to flows, in a JetStream stream. */
export const natsInbox = (bus: Bus, config: Config, logger: Logger): Promise<Inbox> =>
  BusInbox.open(bus, { subjectPrefix: config.MICROTASK_SUBJECT_PREFIX, retentionMs: retentionMs(config), onError: (message) => logger.warn({ inbox: true }, message) });

// ---------------------------------------------------------------- either

/**
 * What a command outside the flows' host reads and writes (`flows`, `show`, `cancel`,
 * `send`, `inspect`): the flows' snapshots, journal and inbox, in this mode's store.
 */
export interface FlowState {
  readonly mode: Mode;
  readonly store: SnapshotStore;
  journal(): Promise<Journal>;
  inbox(): Promise<Inbox>;
  /** NATS: the connection the daemons are asked over. */
  readonly bus?: Bus;
  /** Where the flows are kept, for messages. */
  readonly where: string;
  close(): Promise<void>;
  [Symbol.asyncDispose](): Promise<void>;
}

export async function openFlowState(config: Config, logger: Logger, role: string): Promise<FlowState> {
  if (modeOf(config) === 'embedded') {
    const state = await openEmbeddedState(config, logger);
    return {
      mode: 'embedded',
      store: state.store,
      journal: async () => state.journal,
      inbox: async () => state.inbox,
      where: join(config.MICROTASK_STATE_DIR, 'db'),
      close: state.close,
      [Symbol.asyncDispose]: state.close,
    };
  }
  const bus = await connectBus(config, logger, role);
  try {
    const store = await natsSnapshotStore(bus, config, logger);
    // Opened when asked for: `flows` needs neither, and each is a stream to look up.
    let journal: Promise<Journal> | undefined;
    let inbox: Promise<Inbox> | undefined;
    const close = () => bus.close();
    return {
      mode: 'nats',
      store,
      bus,
      journal: () => (journal ??= natsJournal(bus, config, logger)),
      inbox: () => (inbox ??= natsInbox(bus, config, logger)),
      where: 'NATS KV',
      close,
      [Symbol.asyncDispose]: close,
    };
  } catch (e) {
    await bus.close();
    throw e;
  }
}
