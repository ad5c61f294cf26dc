import { createHash } from 'node:crypto';
import { join, resolve } from 'node:path';
import { existsSync } from 'node:fs';
import { statfs } from 'node:fs/promises';
import { getSystemErrorName } from 'node:util';
import { open, type Database, type DatabaseOptions, type RootDatabase } from 'lmdb';
import { mkdirs } from '../mkdirs.js';
import type { FlowStep, FlowStatus } from './SnapshotStore.js';
import { describeStoreError, StoreUnavailableError } from './StoreUnavailableError.js';

/**
 * The embedded database of a state directory: one LMDB environment under `<stateDir>/db`
 * (lmdb-js), holding the snapshot store's flows and steps, the results store's results and
 * the daemon's request ids in sub-databases. Every store over one directory shares it, so
 * a flow's save, a result's put and a request's claim issued in the same event-loop turn
 * are committed in one transaction with one fsync (lmdb-js batches the writes of a turn).
 *
 * Several processes may open the same directory at once (the daemon beside `microtask
 * cancel` or `resume`): LMDB serializes writers with a lock in `<stateDir>/db/lock.mdb`,
 * and conditional writes (`ifVersion`, `ifNoExists`) are evaluated inside the write
 * transaction, so a compare-and-set holds across processes.
 *
 * Durability: lmdb-js commits with `overlappingSync` (its default off Windows): a commit is
 * visible to readers before its fsync, which runs outside the write lock. With
 * `separateFlushed` each write's promise carries `flushed`, resolved once the OS reports
 * that commit synced; `durable()` waits for both, so a store's write resolves only once
 * on disk. `noSync` is never used.
 *
 * One environment per path per process: `open` of a path already open here shares it
 * (each caller gets its own handle; the environment closes with the last handle).
 */
export class LmdbStore {
  private closed = false;

  private constructor(private readonly shared: SharedEnv) {}

  /** A handle on the database of `stateDir` (created when missing), shared with the other handles of this process. */
  static async open(stateDir: string): Promise<LmdbStore> {
    const path = resolve(stateDir, DB_DIR);
    let shared = environments.get(path);
    if (!shared) {
      // Node 20's recursive mkdir never returns on some pseudo-filesystems: one level at a time.
      await mkdirs(path);
      // lmdb-js maps a new data file and writes its first pages through the map: on a full
      // disk that is a SIGBUS, which ends the process before any handler runs. Look first.
      // (An existing one opens; its writes are refused one by one: see ensureSpace.)
      if (!existsSync(join(path, 'data.mdb'))) {
        const free = await statfs(path).then((s) => s.bavail * s.bsize, () => Infinity);
        if (free < MIN_FREE_BYTES) throw new StoreUnavailableError(describeStoreError({ code: 'ENOSPC' }, path));
      }
      shared = environments.get(path) ?? openEnvOrRefuse(resolve(stateDir), path);
      environments.set(path, shared);
    }
    const handle = new LmdbStore(shared);
    shared.handles.add(handle);
    return handle;
  }

  /**
   * Closes every environment this process opened (its handles fail with DB_CLOSED after):
   * for a process that is about to exit, so that its writes in flight are committed first.
   */
  static async closeAll(): Promise<void> {
    await Promise.all([...environments.values()].flatMap((shared) => [...shared.handles].map((handle) => handle.close())));
  }

  /** The state directory this database belongs to (where earlier versions kept their files). */
  get stateDir(): string {
    return this.shared.stateDir;
  }

  /** `<stateDir>/db`, for messages. */
  get path(): string {
    return this.shared.path;
  }

  /** The sub-databases; for the stores of this directory (and their tests). */
  get dbs(): LmdbDatabases {
    if (this.closed) throw new LmdbClosedError(this.path);
    return this.shared.dbs;
  }

  /**
   * Rejects with LmdbWriteError `ENOSPC` when the disk has less than MIN_FREE_BYTES free:
   * the stores call it before a write. LMDB itself would fail the commit just as well,
   * but lmdb-js then prints the error to stderr twice (one line from its C code without a
   * newline, and the error with its stack from JavaScript), which no caller can silence;
   * a person should see one line. The writes that ask at once share one statfs; while the
   * disk has plenty free (ROOMY_BYTES) the answer stands for ROOMY_FOR_MS, since no burst
   * of writes fills that much sooner (a statfs per batch cost a fifth to half of the saves' rate).
   */
  async ensureSpace(): Promise<void> {
    const shared = this.shared;
    if (shared.roomyUntil > Date.now()) return;
    shared.spaceCheck ??= statfs(shared.path)
      .then(
        (s) => {
          const free = s.bavail * s.bsize;
          shared.diskFull = free < MIN_FREE_BYTES;
          shared.roomyUntil = free >= ROOMY_BYTES ? Date.now() + ROOMY_FOR_MS : 0;
        },
        () => void (shared.diskFull = false),
      )
      .finally(() => (shared.spaceCheck = undefined));
    await shared.spaceCheck;
    if (shared.diskFull) throw new LmdbWriteError('ENOSPC', `ENOSPC: less than ${MIN_FREE_BYTES / 1024} KB free on ${shared.path}`);
  }

  /** Whether a check of ensureSpace found plenty of room less than ROOMY_FOR_MS ago: a write may go without one. */
  get roomy(): boolean {
    return this.shared.roomyUntil > Date.now();
  }

  /** What the last check of ensureSpace found: for writers that cannot wait (the journal). */
  get diskFull(): boolean {
    return this.shared.diskFull;
  }

  /**
   * Claims `requestId` for `flowId` unless another flow holds it; resolves with the flow that
   * holds it now (`flowId` when this call claimed it). Atomic across processes: of two
   * claims of one request id, exactly one wins and both learn its flow.
   */
  async claimRequest(requestId: string, flowId: string): Promise<string> {
    const { requests } = this.dbs;
    const key = storageKey(requestId);
    await this.ensureSpace();
    for (;;) {
      // A random version names this claim: a release removes only the claim it read.
      const version = 1 + Math.floor(Math.random() * 2 ** 48);
      const claimed = await durable(requests.ifNoExists(key, () => quiet(requests.put(key, { requestId, flowId, at: Date.now() }, version))));
      if (claimed) return flowId;
      const holder = requests.get(key);
      if (holder?.requestId === requestId) return holder.flowId;
      // Released between our attempt and this read (the holder's flow did not start): try again.
      if (holder === undefined) continue;
      throw new Error(`request id ${JSON.stringify(requestId)} collides with another one's storage key in ${this.path}`);
    }
  }

  /** The flow that holds `requestId`, if any. */
  async requestFlow(requestId: string): Promise<string | undefined> {
    const holder = this.dbs.requests.get(storageKey(requestId));
    return holder?.requestId === requestId ? holder.flowId : undefined;
  }

  /** Releases `requestId` if `flowId` holds it (a flow that failed to start: a retry must start one). */
  async releaseRequest(requestId: string, flowId: string): Promise<void> {
    const { requests } = this.dbs;
    const key = storageKey(requestId);
    const entry = requests.getEntry(key);
    // At the version read: a claim made meanwhile by another flow stays.
    if (entry?.value.flowId === flowId && entry.version !== undefined) await durable(requests.remove(key, entry.version));
  }

  /** Forgets the request ids claimed before `olderThan` (their retries start new flows); resolves with how many. */
  async pruneRequests(olderThan: Date): Promise<number> {
    const { requests } = this.dbs;
    const limit = olderThan.getTime();
    const removals: Promise<boolean>[] = [];
    for (const { key, value, version } of requests.getRange({ versions: true })) {
      // At the version read: a request claimed again meanwhile stays.
      if (value.at < limit && version !== undefined) removals.push(durable(requests.remove(key, version)));
    }
    return (await Promise.all(removals)).filter(Boolean).length;
  }

  /**
   * Releases this handle; the environment closes with the last handle of the process,
   * once its writes in flight are committed. Closing twice is harmless.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.shared.handles.delete(this);
    if (this.shared.handles.size > 0) return;
    if (environments.get(this.shared.path) === this.shared) environments.delete(this.shared.path);
    await this.shared.root.close();
  }
}

/** A store used after its handle on the database was closed (shutting down, or a bug of the caller). */
export class LmdbClosedError extends Error {
  override readonly name = 'LmdbClosedError';
  readonly code = 'DB_CLOSED';
  constructor(readonly path: string) {
    super(`the database ${path} is closed (its handle was closed): open it again to read or write`);
  }
}

/** A flow's summary as stored beside its record: what `list` shows, and the record's revision it was made from. */
export interface StoredSummary {
  flowId: string;
  pattern: string;
  status: FlowStatus;
  state: unknown;
  updatedAt: string;
  revision: number;
}

/** A flow's entry moved aside: kept as it was, with why. */
export interface AsideEntry {
  flowId: string;
  reason: string;
  movedAt: string;
  revision: number | undefined;
  raw: string;
}

export interface LmdbDatabases {
  /** flowId → the record's JSON text; the entry's version is the flow's revision. */
  flows: Database<string, string>;
  /** flowId → its summary (written with the record, in the same transaction). */
  summaries: Database<StoredSummary, string>;
  /** [flowId, step] → the step (written with the record that makes it durable). */
  steps: Database<FlowStep, [string, number]>;
  /** [flowId, movedAt] → the entry moved aside. */
  aside: Database<AsideEntry, [string, string]>;
  /** flowId → when its file of an earlier version (`<stateDir>/flows/<flowId>.json`) was imported. */
  imported: Database<{ importedAt: string; file: string }, string>;
  /** storageKey(idempotency key) → the result's JSON text; the version is when it was put (ms). */
  results: Database<string, string>;
  /** [put time (ms), storageKey] → true: what retention deletes first. */
  resultTimes: Database<true, [number, string]>;
  /** storageKey(request id) → the flow started for it; the version names the claim. */
  requests: Database<{ requestId: string; flowId: string; at: number }, string>;
  /** [flowId, time (µs), writer] → a journal entry's JSON text, or a reference to the step the snapshot store holds. */
  journal: Database<string, [string, number, string]>;
  /** flowId → when its journal was last written to (µs, also the version): what retention reads. */
  journalFlows: Database<number, string>;
  /** [flowId, time (µs), writer] → an event sent to the flow, kept until applied (src/inbox/LmdbInbox.ts). */
  inbox: Database<string, [string, number, string]>;
  /** [time (µs), flowId, writer] → true: the inbox in the order written, for followers. */
  inboxTimes: Database<true, [number, string, string]>;
}

/** A write of lmdb-js with `separateFlushed`: `flushed` settles once the commit is on disk. */
type Flushable<T> = Promise<T> & { flushed?: PromiseLike<unknown> };

/** Waits until the write is committed and flushed to disk; resolves with whether it happened (a failed condition: false). */
export async function durable(write: Promise<boolean>): Promise<boolean> {
  const value = await committed(write);
  // Without overlappingSync (Windows) the commit itself synced and `flushed` is the same promise.
  await (write as Flushable<boolean>).flushed;
  return value;
}

/**
 * Waits until the write is committed; a commit that failed rejects with LmdbWriteError,
 * whose code is the system's (`ENOSPC` on a full disk). lmdb-js rejects every write of a
 * failed commit with a bare "Commit failed" whose `commitError` is another promise,
 * rejected with the cause (errno as a number); left unhandled, that one kills the process.
 */
export async function committed<T>(write: Promise<T>): Promise<T> {
  try {
    return await write;
  } catch (e) {
    throw await commitFailure(e);
  }
}

/**
 * For a write whose own promise nobody awaits (the writes inside a conditional write's
 * callback share the fate of the conditional write, which is awaited): its rejection on a
 * failed commit is handled, and the cause along with it.
 */
export function quiet(write: Promise<unknown>): void {
  write.catch((e: unknown) => commitFailure(e));
}

/** A commit of the database that failed: a full disk (`ENOSPC`), a read-only file system, … */
export class LmdbWriteError extends Error {
  override readonly name = 'LmdbWriteError';
  constructor(
    /** The system's code (`ENOSPC`, `EROFS`, `EIO`…), or `DB_WRITE` when lmdb gave none. */
    readonly code: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

async function commitFailure(e: unknown): Promise<unknown> {
  const pending = (e as { commitError?: Promise<unknown> } | undefined)?.commitError;
  if (!pending || typeof pending.then !== 'function') return e;
  const cause = await pending.then(
    () => e,
    (c: unknown) => c,
  );
  const errno = (cause as { code?: unknown } | undefined)?.code;
  const code = typeof errno === 'number' && errno > 0 ? systemErrorName(errno) : typeof errno === 'string' ? errno : 'DB_WRITE';
  return new LmdbWriteError(code, `${code}: ${(cause as Error)?.message ?? String(cause)}`, { cause });
}

function systemErrorName(errno: number): string {
  try {
    return getSystemErrorName(-errno);
  } catch {
    return 'DB_WRITE';
  }
}

/**
 * The LMDB key of a string key of any length: LMDB keys stop at 1978 bytes and lmdb-js
 * strings cannot hold NUL, so a longer key (or one with NUL) is stored by its SHA-256.
 * The prefixes keep the two forms apart; values hold the original key, which readers check.
 */
export function storageKey(key: string): string {
  return Buffer.byteLength(key) <= MAX_PLAIN_KEY_BYTES && !key.includes('\0')
    ? `=${key}`
    : `#${createHash('sha256').update(key).digest('hex')}`;
}

// ---------------------------------------------------------------------------------

const DB_DIR = 'db';
const MAX_PLAIN_KEY_BYTES = 1000;
/** Below this much free space the stores refuse to write (a commit writes a few pages of 4 KB, a large step more). */
const MIN_FREE_BYTES = 128 * 1024;
/** With this much free, a check of the free space holds for ROOMY_FOR_MS. */
const ROOMY_BYTES = 256 * 1024 * 1024;
const ROOMY_FOR_MS = 1_000;

interface SharedEnv {
  stateDir: string;
  path: string;
  root: RootDatabase;
  dbs: LmdbDatabases;
  handles: Set<LmdbStore>;
  /** The disk had less than MIN_FREE_BYTES free at the last check. */
  diskFull: boolean;
  spaceCheck: Promise<void> | undefined;
  /** Until then the disk is known to have ROOMY_BYTES free: no check needed. */
  roomyUntil: number;
}

/**
 * The size from which a value is compressed. lmdb-js compresses each value in a task of
 * its own on libuv's thread pool, queued from the main thread: for the steps and records of
 * a few KB the host writes many of, that queueing and its completion cost more main-thread
 * time than the bytes saved are worth (a feedback loop spent 8% of its CPU there, at
 * lmdb-js's default of 1,000 bytes). Large values still shrink.
 */
export const COMPRESS_FROM = 16 * 1024;

const ignore = () => undefined;

/** The environments open in this process, by path. */
const environments = new Map<string, SharedEnv>();

/**
 * A step as text: its JSON without the snapshot, a newline, the snapshot's JSON as the host
 * made it (JSON never holds a raw newline). Written as is, not serialized again: about 1.6x
 * the rate of msgpack encoding the step (a 2 KB snapshot string inside an object).
 */
const stepEncoding = {
  encode: (step: FlowStep): string => `${JSON.stringify({ ...step, snapshotJson: undefined })}\n${step.snapshotJson}`,
  decode: (bytes: Uint8Array): FlowStep => {
    // lmdb-js may hand a reused buffer whose `length` (not byteLength) is the value's size.
    const text = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length).toString('utf8');
    const cut = text.indexOf('\n');
    return { ...(JSON.parse(text.slice(0, cut)) as Omit<FlowStep, 'snapshotJson'>), snapshotJson: text.slice(cut + 1) };
  },
};

/**
 * openEnv, with a failure a person can act on: lmdb-js throws its errno as a number
 * (28, not ENOSPC) from creating the data file on a full disk or a read-only directory.
 */
function openEnvOrRefuse(stateDir: string, path: string): SharedEnv {
  try {
    return openEnv(stateDir, path);
  } catch (e) {
    const errno = (e as { code?: unknown } | undefined)?.code;
    const code = typeof errno === 'number' && errno > 0 ? systemErrorName(errno) : typeof errno === 'string' ? errno : undefined;
    if (!code) throw e;
    throw new StoreUnavailableError(describeStoreError({ code }, path), { cause: e });
  }
}

function openEnv(stateDir: string, path: string): SharedEnv {
  const root = open({
    path,
    // Values of COMPRESS_FROM bytes and more are written LZ4-compressed; all are read
    // whether compressed or not (a flag byte in the value says), so databases written with
    // lmdb-js's default threshold (1,000 bytes) read the same.
    compression: { threshold: COMPRESS_FROM },
    // Each write's promise gets `flushed` (see durable()); with overlappingSync the fsync runs outside the write lock.
    separateFlushed: true,
    maxDbs: 16,
  });
  // lmdb-js opens each event turn's transaction with a write of its own whose promise
  // nobody holds: a commit that fails (a full disk) rejects it unhandled, which ends the
  // process. Once that write is made (in the task that starts the turn's transaction,
  // after these callbacks), `committed` is its promise: a handler goes on it then.
  root.on('beforecommit', () => queueMicrotask(() => void root.committed.then(ignore, ignore)));
  const dbs: LmdbDatabases = {
    flows: root.openDB<string, string>('flows', { useVersions: true, encoding: 'string' }),
    summaries: root.openDB<StoredSummary, string>('flowSummaries', {}),
    // `encoder` is an option lmdb-js reads (open.js) but its types leave out.
    steps: root.openDB<FlowStep, [string, number]>('flowSteps', { encoder: stepEncoding } as DatabaseOptions),
    aside: root.openDB<AsideEntry, [string, string]>('flowsAside', {}),
    imported: root.openDB<{ importedAt: string; file: string }, string>('flowsImported', {}),
    results: root.openDB<string, string>('results', { useVersions: true, encoding: 'string' }),
    resultTimes: root.openDB<true, [number, string]>('resultTimes', {}),
    requests: root.openDB<{ requestId: string; flowId: string; at: number }, string>('requests', { useVersions: true }),
    journal: root.openDB<string, [string, number, string]>('journal', { encoding: 'string' }),
    journalFlows: root.openDB<number, string>('journalFlows', { useVersions: true }),
    inbox: root.openDB<string, [string, number, string]>('inbox', { encoding: 'string' }),
    inboxTimes: root.openDB<true, [number, string, string]>('inboxTimes', {}),
  };
  return { stateDir, path, root, dbs, handles: new Set(), diskFull: false, spaceCheck: undefined, roomyUntil: 0 };
}

/** Where earlier versions of the embedded stores kept their files, under the state directory. */
export const legacyDirs = (stateDir: string) => ({ flows: join(stateDir, 'flows'), results: join(stateDir, 'results'), journal: join(stateDir, 'journal') });
