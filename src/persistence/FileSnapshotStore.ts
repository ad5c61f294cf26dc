import { randomBytes } from 'node:crypto';
import { open, readdir, readFile, rename, stat, unlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { GroupDirSync, syncDir } from './dirSync.js';
import {
  assertFlowId,
  byUpdatedAt,
  checkRecordForSave,
  CorruptSnapshotError,
  FINISHED_STATUSES,
  isPrunable,
  isValidFlowId,
  mapLimit,
  parseStoredJson,
  parseStoredRecord,
  report,
  SnapshotConflictError,
  statusFilter,
  summarize,
  type FlowSnapshotRecord,
  type FlowStatus,
  type FlowSummary,
  type ListFilter,
  type SnapshotStore,
  type SnapshotStoreOptions,
  type StoredSnapshot,
} from './SnapshotStore.js';
import { mkdirs } from '../mkdirs.js';

/**
 * Snapshots as files, the embedded default: `<dir>/<flowId>.json` holds
 * `{"revision": n, "record": {...}}`. A save writes a temp file in the same directory,
 * fsyncs it, renames it over the flow's file and fsyncs the directory, so a reader (or a
 * daemon restarted after a crash) sees the old record or the new one, never a torn file.
 *
 * Revisions are checked inside this process (saves of one flow run one after another),
 * so one daemon owns a directory; for several daemons use KvSnapshotStore. Readers in
 * other processes (the CLI listing flows) are fine.
 *
 * Corrupt entries go to `<dir>/corrupt/<flowId>.<timestamp>.json` with the reason in
 * `<flowId>.<timestamp>.reason.txt` beside it.
 */
export class FileSnapshotStore implements SnapshotStore {
  /** The tail of each flow's queue of file operations. */
  private readonly queues = new Map<string, Promise<void>>();
  private dirReady: Promise<void> | undefined;
  /**
   * What this store last wrote for each flow: its revision and the file's identity. A save
   * whose file is still that one (same inode, size and mtime) knows the stored revision
   * without reading and parsing the record again; any other file is read.
   */
  private readonly written = new Map<string, WrittenFile>();
  /** Directory fsyncs shared by the saves of many flows (group commit). */
  private readonly dirSyncs: GroupDirSync;

  constructor(
    readonly dir: string,
    private readonly options: SnapshotStoreOptions = {},
  ) {
    this.dirSyncs = new GroupDirSync(dir);
  }

  /**
   * A store over `dir`, created when missing, with the temp files of saves that a crash
   * interrupted (older than a minute, so never one in flight) removed.
   */
  static async open(dir: string, options: SnapshotStoreOptions = {}): Promise<FileSnapshotStore> {
    const store = new FileSnapshotStore(dir, options);
    await store.ensureDir();
    await store.removeLeftovers(LEFTOVER_AGE_MS);
    return store;
  }

  async save(record: FlowSnapshotRecord, expectedRevision: number | null): Promise<number> {
    const checked = checkRecordForSave(record);
    const flowId = checked.flowId;
    return this.exclusive(flowId, async () => {
      let actual: number | null | undefined = await this.revisionWritten(flowId);
      if (actual === undefined) {
        const current = await this.read(flowId);
        if (current.kind === 'corrupt' && current.revision === undefined) throw current.error;
        actual = current.kind === 'missing' ? null : current.revision!;
      }
      if (actual !== expectedRevision) throw new SnapshotConflictError(flowId, expectedRevision, actual);
      const revision = (actual ?? 0) + 1;
      await this.ensureDir();
      this.written.delete(flowId);
      const file = await this.writeAtomically(this.file(flowId), JSON.stringify({ revision, record: checked }));
      this.written.set(flowId, { revision, ...file });
      return revision;
    });
  }

  async load(flowId: string): Promise<StoredSnapshot | undefined> {
    assertFlowId(flowId);
    const entry = await this.read(flowId);
    if (entry.kind === 'missing') return undefined;
    if (entry.kind === 'corrupt') throw entry.error;
    return { record: entry.record, revision: entry.revision };
  }

  async list(filter?: ListFilter): Promise<FlowSummary[]> {
    const wanted = statusFilter(filter);
    const summaries: FlowSummary[] = [];
    await mapLimit(await this.flowIds(), READ_CONCURRENCY, async (flowId) => {
      const entry = await this.read(flowId);
      if (entry.kind === 'corrupt') report(this.options.onCorrupt, entry.error);
      else if (entry.kind === 'ok' && wanted(entry.record.status)) summaries.push(summarize(entry.record));
    });
    return summaries.sort(byUpdatedAt);
  }

  async delete(flowId: string): Promise<void> {
    assertFlowId(flowId);
    await this.exclusive(flowId, async () => {
      this.written.delete(flowId);
      if (await removeFile(this.file(flowId))) await this.syncOwnDir();
    });
  }

  async moveAside(flowId: string, reason: string): Promise<void> {
    assertFlowId(flowId);
    await this.exclusive(flowId, async () => {
      this.written.delete(flowId);
      const asideDir = join(this.dir, CORRUPT_DIR);
      await mkdirs(asideDir);
      const stamp = new Date().toISOString().replace(/:/g, '-');
      const base = join(asideDir, `${flowId}.${stamp}`);
      try {
        await rename(this.file(flowId), `${base}.json`);
      } catch (e) {
        if (isNotFound(e)) return;
        throw e;
      }
      await this.writeAtomically(`${base}.reason.txt`, `${reason}\n`);
      await syncDir(this.dir);
    });
  }

  async prune(olderThan: Date, statuses: readonly FlowStatus[] = FINISHED_STATUSES): Promise<number> {
    let pruned = 0;
    await mapLimit(await this.flowIds(), READ_CONCURRENCY, (flowId) =>
      this.exclusive(flowId, async () => {
        const entry = await this.read(flowId);
        if (entry.kind === 'corrupt') report(this.options.onCorrupt, entry.error);
        if (entry.kind === 'ok' && isPrunable(entry.record, olderThan, statuses) && (await removeFile(this.file(flowId)))) {
          this.written.delete(flowId);
          pruned++;
        }
      }),
    );
    if (pruned > 0) await syncDir(this.dir);
    return pruned;
  }

  /**
   * Removes the temp files of saves that never reached their rename (the process died),
   * if older than `olderThanMs`; resolves with how many. The flows' files are untouched.
   */
  async removeLeftovers(olderThanMs: number): Promise<number> {
    const names = await this.names();
    const cutoff = Date.now() - olderThanMs;
    let removed = 0;
    for (const name of names.filter(isTempFile)) {
      const path = join(this.dir, name);
      const info = await stat(path).catch(() => undefined);
      if (info && info.mtimeMs <= cutoff && (await removeFile(path))) removed++;
    }
    return removed;
  }

  // -- internals ----------------------------------------------------------------

  private file(flowId: string): string {
    return join(this.dir, `${flowId}.json`);
  }

  private ensureDir(): Promise<void> {
    this.dirReady ??= mkdirs(this.dir).then(
      () => undefined,
      (e: unknown) => {
        this.dirReady = undefined;
        throw e;
      },
    );
    return this.dirReady;
  }

  /** Runs `fn` after every operation on `flowId` queued before it has settled. */
  private exclusive<T>(flowId: string, fn: () => Promise<T>): Promise<T> {
    const run = (this.queues.get(flowId) ?? Promise.resolve()).then(fn);
    const tail = run.then(
      () => undefined,
      () => undefined,
    );
    this.queues.set(flowId, tail);
    void tail.then(() => {
      if (this.queues.get(flowId) === tail) this.queues.delete(flowId);
    });
    return run;
  }

  /** Names in the directory; none when it does not exist yet. */
  private async names(): Promise<string[]> {
    try {
      return (await readdir(this.dir, { withFileTypes: true })).filter((e) => e.isFile()).map((e) => e.name);
    } catch (e) {
      if (isNotFound(e)) return [];
      throw e;
    }
  }

  private async flowIds(): Promise<string[]> {
    return (await this.names())
      .filter((name) => name.endsWith('.json') && !isTempFile(name))
      .map((name) => name.slice(0, -'.json'.length))
      .filter(isValidFlowId);
  }

  private async read(flowId: string): Promise<FileEntry> {
    const path = this.file(flowId);
    let text: string;
    try {
      text = await readFile(path, 'utf8');
    } catch (e) {
      if (isNotFound(e)) return { kind: 'missing' };
      throw e;
    }
    try {
      const json = parseStoredJson(flowId, text, path);
      const revision = (json as { revision?: unknown } | null)?.revision;
      if (typeof json !== 'object' || json === null || Array.isArray(json) || !Number.isSafeInteger(revision) || (revision as number) < 1) {
        throw new CorruptSnapshotError(flowId, 'wrong shape (expected {"revision": <positive integer>, "record": {...}})', path);
      }
      try {
        return { kind: 'ok', record: parseStoredRecord(flowId, (json as { record?: unknown }).record, path), revision: revision as number };
      } catch (e) {
        // The revision is readable: a save that expects it may overwrite the bad record.
        if (e instanceof CorruptSnapshotError) return { kind: 'corrupt', error: e, revision: revision as number };
        throw e;
      }
    } catch (e) {
      if (e instanceof CorruptSnapshotError) return { kind: 'corrupt', error: e };
      throw e;
    }
  }

  /**
   * The revision this store wrote for the flow when its file is still the one written
   * (a rename always makes a new inode; an edit in place changes the mtime); undefined
   * when that is not known, and the file must be read.
   */
  private async revisionWritten(flowId: string): Promise<number | undefined> {
    const known = this.written.get(flowId);
    if (!known) return undefined;
    const info = await stat(this.file(flowId), { bigint: true }).catch(() => undefined);
    return info && info.ino === known.ino && info.size === known.size && info.mtimeNs === known.mtimeNs ? known.revision : undefined;
  }

  /** Temp file in the same directory, fsync, rename over `path`, fsync the directory; the file's identity. */
  private async writeAtomically(path: string, data: string): Promise<Omit<WrittenFile, 'revision'>> {
    const dir = dirname(path);
    const temp = join(dir, `.${basename(path)}.${process.pid}.${randomBytes(6).toString('hex')}${TEMP_SUFFIX}`);
    let file: Omit<WrittenFile, 'revision'>;
    try {
      const handle = await open(temp, 'wx', 0o600);
      try {
        await handle.writeFile(data, 'utf8');
        await handle.sync();
        const info = await handle.stat({ bigint: true });
        file = { ino: info.ino, size: info.size, mtimeNs: info.mtimeNs };
      } finally {
        await handle.close();
      }
      await rename(temp, path);
    } catch (e) {
      await removeFile(temp).catch(() => {});
      throw e;
    }
    await (dir === this.dir ? this.syncOwnDir() : syncDir(dir));
    return file;
  }

  /** Makes the renames done so far in the store's directory durable, sharing fsyncs between saves. */
  private syncOwnDir(): Promise<void> {
    return this.dirSyncs.sync();
  }
}

interface WrittenFile {
  revision: number;
  ino: bigint;
  size: bigint;
  mtimeNs: bigint;
}

type FileEntry =
  | { kind: 'missing' }
  | { kind: 'ok'; record: FlowSnapshotRecord; revision: number }
  | { kind: 'corrupt'; error: CorruptSnapshotError; revision?: number };

const CORRUPT_DIR = 'corrupt';
const TEMP_SUFFIX = '.tmp';
/** A temp file older than this cannot belong to a save in flight. */
const LEFTOVER_AGE_MS = 60_000;
/** Files read at once by list and prune (a thousand flows must not exhaust file handles). */
const READ_CONCURRENCY = 32;

const isTempFile = (name: string) => name.startsWith('.') && name.endsWith(TEMP_SUFFIX);

function isNotFound(e: unknown): boolean {
  return (e as NodeJS.ErrnoException | null)?.code === 'ENOENT';
}

/** Whether it removed the file (false when there was none). */
async function removeFile(path: string): Promise<boolean> {
  try {
    await unlink(path);
    return true;
  } catch (e) {
    if (isNotFound(e)) return false;
    throw e;
  }
}

/** Makes a rename or unlink in `dir` durable. Windows cannot open a directory to fsync it. */
