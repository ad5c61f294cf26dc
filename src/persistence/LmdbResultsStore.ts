import { readdir } from 'node:fs/promises';
import { MicrotaskResultSchema, type MicrotaskResult } from '../contracts/microtask.js';
import { committed, durable, legacyDirs, quiet, storageKey, type LmdbDatabases, type LmdbStore } from './LmdbStore.js';
import { LogResultsStore, ResultsStoreError, type PrunableResultsStore } from './LogResultsStore.js';

/**
 * Microtask results in the embedded database (LmdbStore): the result's JSON text under its
 * idempotency key (storageKey), the entry's version the time it was put (ms), and an index
 * by that time for retention. The puts of an event-loop turn share one commit and one
 * fsync with every other write of the database (snapshots of the flows they belong to
 * included); a put resolves once on disk, so a result the flow heard of survives a crash.
 * `queue` makes the same write without the flow waiting for it: writes commit in the order
 * made, so the flow's next save (made after) never lands without it.
 *
 * A stored value that does not parse, fails the schema or is the result of another key is
 * as good as none (the task runs again). Results of earlier versions (the daily logs and
 * older one-file results under `<stateDir>/results`) are read on a miss through a
 * LogResultsStore over that directory, which `prune` empties with time.
 */
export class LmdbResultsStore implements PrunableResultsStore {

  private readonly legacy: LogResultsStore | undefined;

  constructor(
    private readonly db: LmdbStore,
    private readonly options: LmdbResultsStoreOptions = {},
  ) {
    this.legacy = options.legacy;
  }

  /** Where the results are (`<stateDir>/db`), for messages a person acts on (`ENOSPC: no space left on …`). */
  get location(): string {
    return this.db.path;
  }

  /** Read for each operation: a handle closed fails at once (a write to a closed environment would never settle). */
  private get dbs(): LmdbDatabases {
    return this.db.dbs;
  }

  /** The store over `db`, reading the results of earlier versions in its state directory on a miss when there are any. */
  static async open(db: LmdbStore, options: Omit<LmdbResultsStoreOptions, 'legacy'> = {}): Promise<LmdbResultsStore> {
    const dir = legacyDirs(db.stateDir).results;
    const names = await readdir(dir).catch((e: NodeJS.ErrnoException) => {
      if (e.code === 'ENOENT' || e.code === 'ENOTDIR') return [];
      throw new ResultsStoreError('RESULTS_READ_FAILED', `cannot list the results of earlier versions in ${dir}: ${e.message}`, { cause: e });
    });
    // Nothing more is written there: an empty directory stays empty, and misses cost nothing.
    return new LmdbResultsStore(db, { ...options, ...(names.length ? { legacy: new LogResultsStore(dir) } : {}) });
  }

  async get(key: string): Promise<MicrotaskResult | undefined> {
    let text: string | undefined;
    try {
      text = this.dbs.results.get(storageKey(key));
    } catch (e) {
      throw new ResultsStoreError('RESULTS_READ_FAILED', `cannot read the result of ${key} in ${this.db.path}: ${(e as Error).message}`, { cause: e });
    }
    if (text !== undefined) return validResult(key, text);
    return this.legacy?.get(key);
  }

  async put(key: string, result: MicrotaskResult): Promise<void> {
    try {
      await this.db.ensureSpace();
      await this.write(key, result);
    } catch (e) {
      throw this.writeFailed(key, e);
    }
  }

  /**
   * `put`, queued before this returns: lmdb-js commits a database's writes in the order they
   * are made, so this one lands no later than any write made after it (the flow's next
   * save among them). Undefined when the free space has not been checked lately: the write
   * cannot go before that check, so it would not be queued now (use `put`).
   */
  queue(key: string, result: MicrotaskResult): Promise<void> | undefined {
    if (!this.db.roomy) return undefined;
    let written: Promise<boolean>;
    try {
      written = this.write(key, result);
    } catch (e) {
      return Promise.reject(this.writeFailed(key, e));
    }
    return written.then(
      () => undefined,
      (e: unknown) => Promise.reject(this.writeFailed(key, e)),
    );
  }

  /** The result and its place in the time index, in one transaction; resolves once on disk. */
  private write(key: string, result: MicrotaskResult): Promise<boolean> {
    const stored = storageKey(key);
    const at = this.options.now?.() ?? Date.now();
    const { results, resultTimes } = this.dbs;
    return durable(
      results.batch(() => {
        quiet(results.put(stored, JSON.stringify(result), at));
        quiet(resultTimes.put([at, stored], true));
      }),
    );
  }

  private writeFailed(key: string, e: unknown): ResultsStoreError {
    return new ResultsStoreError(
      'RESULTS_WRITE_FAILED',
      `cannot store the microtask result of ${key} in ${this.db.path}: ${(e as Error).message}; the task will run again if the flow is resumed`,
      { cause: e },
    );
  }

  /**
   * Deletes the results put before `olderThan` (and the files of earlier versions as old);
   * resolves with how many results and files went. A result put again since is kept.
   */
  async prune(olderThan: Date): Promise<number> {
    const removals: Promise<boolean>[] = [];
    const indexRemovals: Promise<boolean>[] = [];
    try {
      const { results, resultTimes } = this.dbs;
      for (const key of resultTimes.getKeys({ end: [olderThan.getTime(), ''] }) as Iterable<[number, string]>) {
        const [at, stored] = key;
        // Only the result put at that time (its version): one put again later stays.
        removals.push(durable(results.remove(stored, at)));
        indexRemovals.push(committed(resultTimes.remove(key)));
      }
      const [removed] = await Promise.all([Promise.all(removals), Promise.all(indexRemovals)]);
      return removed.filter(Boolean).length + ((await this.legacy?.prune(olderThan)) ?? 0);
    } catch (e) {
      if (e instanceof ResultsStoreError) throw e;
      throw new ResultsStoreError('RESULTS_PRUNE_FAILED', `cannot delete old results in ${this.db.path}: ${(e as Error).message}`, { cause: e });
    }
  }
}

export interface LmdbResultsStoreOptions {
  /** Results of earlier versions, read on a miss. */
  legacy?: LogResultsStore;
  /** The clock of `put` (ms), for tests of retention. */
  now?: () => number;
}

/** A result read back: valid and of its key, or nothing (the task runs again). */
function validResult(key: string, text: string): MicrotaskResult | undefined {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    return undefined;
  }
  const parsed = MicrotaskResultSchema.safeParse(json);
  return parsed.success && parsed.data.key === key ? parsed.data : undefined;
}
