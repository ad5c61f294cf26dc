import { createHash } from 'node:crypto';
import { open, readdir, readFile, stat, unlink, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { syncDir } from './dirSync.js';
import { mkdirs } from '../mkdirs.js';
import { MicrotaskResultSchema, type MicrotaskResult } from '../contracts/microtask.js';
import type { ResultsStore } from '../actors/ResultsStore.js';
import { Coalesced } from './dirSync.js';

export type ResultsStoreErrorCode = 'RESULTS_WRITE_FAILED' | 'RESULTS_READ_FAILED' | 'RESULTS_PRUNE_FAILED';

/** An I/O failure of the results store; `cause` is the error of the file system. */
export class ResultsStoreError extends Error {
  override readonly name = 'ResultsStoreError';
  constructor(
    readonly code: ResultsStoreErrorCode,
    message: string,
    options: { cause?: unknown } = {},
  ) {
    super(message, options);
  }
}

/** A results store whose old results can be deleted (the CLI and the daemon prune at start). */
export interface PrunableResultsStore extends ResultsStore {
  /** Deletes the results stored before `olderThan` (whole segments); how many files went. */
  prune(olderThan: Date): Promise<number>;
}

const SEGMENT = /^results-(\d{4})(\d{2})(\d{2})\.log$/;
const DAY_MS = 86_400_000;

/** The segment a result written at `now` goes to: one per UTC day. */
export function segmentName(now: Date): string {
  return `results-${now.toISOString().slice(0, 10).replaceAll('-', '')}.log`;
}

/** When the last result of a segment can have been written (the end of its UTC day); NaN for other names. */
function segmentEnd(name: string): number {
  const match = SEGMENT.exec(name);
  return match ? Date.UTC(Number(match[1]), Number(match[2]) - 1, Number(match[3])) + DAY_MS : Number.NaN;
}

/** Where FileResultsStore (before the log) kept the result of `key`. */
export function legacyResultFile(dir: string, key: string): string {
  return join(dir, `${createHash('sha256').update(key).digest('hex').slice(0, 40)}.json`);
}

/** One line of a segment: the key it was put under and the result. */
interface Line {
  k: string;
  r: unknown;
}

/** A result read back: valid and of its key, or nothing (the task runs again). */
function validResult(key: string, value: unknown): MicrotaskResult | undefined {
  const parsed = MicrotaskResultSchema.safeParse(value);
  return parsed.success && parsed.data.key === key ? parsed.data : undefined;
}

interface PendingPut {
  line: string;
  key: string;
  resolve: () => void;
  reject: (error: unknown) => void;
}

/**
 * Microtask results on disk for embedded mode, as a log: each put appends one JSON line
 * (`{"k": key, "r": result}`) to the day's segment (`results-<yyyymmdd>.log`, UTC), opened
 * with O_APPEND. The puts in flight are written with one write() and made durable with one
 * fdatasync (group commit); a put resolves only once the fdatasync covering its line is done,
 * so a result the flow heard of survives a crash and is never paid for twice.
 *
 * Several processes may append to the same directory (an embedded `run` beside `microtask
 * resume`): one O_APPEND write per batch keeps lines whole. Each reader keeps an index of
 * what it read (the last line of a key wins, as the last put does) and on a miss reads what
 * was appended since before answering nothing. Every batch starts with a newline, so a line
 * torn by a crash mid-write ends there and is skipped as unreadable; a line that does not
 * parse, fails the schema or is not of its key is as good as none.
 *
 * Results from before the log (`<dir>/<hash>.json`, one file each) are read on a miss, so an
 * upgrade does not pay for those calls again; `prune` deletes them with the old segments.
 */
export class LogResultsStore implements PrunableResultsStore {
  /** Key → its latest line's result (JSON, validated when read) and the segment holding it. */
  private readonly index = new Map<string, { result: unknown; segment: string }>();
  /** How far each segment was read (just after its last complete line). */
  private readonly offsets = new Map<string, number>();
  private hasLegacyFiles = false;
  private readonly catchUps = new Coalesced(() => this.readAppended());

  private pending: PendingPut[] = [];
  private flushing: Promise<void> | undefined;
  /** The segment whose directory entry this instance made durable (once per segment). */
  private syncedSegment: string | undefined;
  private ready: Promise<unknown> | undefined;
  private closed = false;

  constructor(
    private readonly dir: string,
    private readonly options: { now?: () => Date } = {},
  ) {}

  /** The directory, as a message about a failed put names it (`ENOSPC: no space left on <dir>`). */
  get location(): string {
    return this.dir;
  }

  async get(key: string): Promise<MicrotaskResult | undefined> {
    const known = this.lookup(key);
    if (known) return known;
    // A miss: another process may have stored it since (or an earlier version of the store).
    await this.catchUps.run();
    return this.lookup(key) ?? (this.hasLegacyFiles ? await this.readLegacy(key) : undefined);
  }

  put(key: string, result: MicrotaskResult): Promise<void> {
    if (this.closed) return Promise.reject(new ResultsStoreError('RESULTS_WRITE_FAILED', `results store ${this.dir} is closed`));
    const line = `${JSON.stringify({ k: key, r: result } satisfies Line)}\n`;
    return new Promise<void>((resolve, reject) => {
      this.pending.push({ line, key, resolve, reject });
      this.flushing ??= this.flush();
    });
  }

  /** Deletes the segments whose day ended before `olderThan`, and older result files from before the log. */
  async prune(olderThan: Date): Promise<number> {
    const limit = olderThan.getTime();
    let names: string[];
    try {
      names = await readdir(this.dir);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return 0;
      throw new ResultsStoreError('RESULTS_PRUNE_FAILED', `cannot list the results in ${this.dir}: ${(e as Error).message}`, { cause: e });
    }
    let deleted = 0;
    try {
      for (const name of names) {
        const old = SEGMENT.test(name)
          ? segmentEnd(name) <= limit
          : name.endsWith('.json') && ((await stat(join(this.dir, name)).catch(() => undefined))?.mtimeMs ?? limit) < limit;
        if (!old) continue;
        await unlink(join(this.dir, name)).catch((e: NodeJS.ErrnoException) => {
          if (e.code !== 'ENOENT') throw e; // another process pruned it first
        });
        deleted++;
        this.offsets.delete(name);
        for (const [key, entry] of this.index) if (entry.segment === name) this.index.delete(key);
      }
      if (deleted) await syncDir(this.dir);
    } catch (e) {
      throw new ResultsStoreError('RESULTS_PRUNE_FAILED', `cannot delete old results in ${this.dir}: ${(e as Error).message}`, { cause: e });
    }
    return deleted;
  }

  /** Waits for the puts in flight; later puts fail. Not needed for durability: a put resolved is on disk. */
  async close(): Promise<void> {
    this.closed = true;
    while (this.flushing) await this.flushing;
  }

  private lookup(key: string): MicrotaskResult | undefined {
    const entry = this.index.get(key);
    return entry ? validResult(key, entry.result) : undefined;
  }

  /** Writes the puts waiting, one batch after another, until none waits. */
  private async flush(): Promise<void> {
    while (this.pending.length) {
      const batch = this.pending;
      this.pending = [];
      const segment = segmentName(this.options.now?.() ?? new Date());
      try {
        // Opened for each batch (an open is cheap beside the fdatasync): no handle outlives a
        // batch, and a new UTC day starts a new segment by itself.
        const handle = await this.openSegment(segment);
        try {
          // The leading newline ends a line torn by a crash before this batch: it is skipped, not glued to ours.
          const bytes = Buffer.from(`\n${batch.map((p) => p.line).join('')}`);
          const { bytesWritten } = await handle.write(bytes, 0, bytes.length);
          if (bytesWritten !== bytes.length) throw new Error(`short write: ${bytesWritten} of ${bytes.length} bytes`);
          await handle.datasync();
        } finally {
          await handle.close();
        }
      } catch (e) {
        const error = new ResultsStoreError(
          'RESULTS_WRITE_FAILED',
          `cannot store ${batch.length} microtask result(s) in ${this.dir}: ${(e as Error).message}`,
          { cause: e },
        );
        for (const p of batch) p.reject(error);
        continue;
      }
      for (const p of batch) {
        this.index.set(p.key, { result: (JSON.parse(p.line) as Line).r, segment });
        p.resolve();
      }
    }
    this.flushing = undefined;
  }

  /** `segment`, opened for appending (O_APPEND: one write lands whole after every other process's). */
  private async openSegment(segment: string): Promise<FileHandle> {
    // Not kept when it failed: the next batch tries again.
    this.ready ??= mkdirs(this.dir).catch((e: unknown) => {
      this.ready = undefined;
      throw e;
    });
    await this.ready;
    const handle = await open(join(this.dir, segment), 'a');
    if (this.syncedSegment !== segment) {
      // The segment's directory entry must survive a power cut too.
      try {
        await syncDir(this.dir);
      } catch (e) {
        await handle.close();
        throw e;
      }
      this.syncedSegment = segment;
    }
    return handle;
  }

  /** Reads what was appended to every segment since the last read, oldest segment first. */
  private async readAppended(): Promise<void> {
    let names: string[];
    try {
      names = await readdir(this.dir);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw new ResultsStoreError('RESULTS_READ_FAILED', `cannot list the results in ${this.dir}: ${(e as Error).message}`, { cause: e });
    }
    this.hasLegacyFiles = names.some((n) => n.endsWith('.json'));
    for (const segment of names.filter((n) => SEGMENT.test(n)).sort()) {
      try {
        await this.readSegment(segment);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'ENOENT') continue; // pruned meanwhile
        throw new ResultsStoreError('RESULTS_READ_FAILED', `cannot read the results in ${join(this.dir, segment)}: ${(e as Error).message}`, {
          cause: e,
        });
      }
    }
  }

  private async readSegment(segment: string): Promise<void> {
    const from = this.offsets.get(segment) ?? 0;
    const path = join(this.dir, segment);
    // Most misses find nothing new: a stat, no open.
    if ((await stat(path)).size <= from) return;
    const handle = await open(path, 'r');
    try {
      const { size } = await handle.stat();
      const buffer = Buffer.alloc(size - from);
      let read = 0;
      while (read < buffer.length) {
        const { bytesRead } = await handle.read(buffer, read, buffer.length - read, from + read);
        if (bytesRead === 0) break;
        read += bytesRead;
      }
      // Only complete lines: a line being written (or torn) is read once it has its newline.
      const end = buffer.lastIndexOf(0x0a, read - 1);
      if (end < 0) return;
      for (const text of buffer.toString('utf8', 0, end).split('\n')) {
        if (!text) continue;
        let line: Partial<Line>;
        try {
          line = JSON.parse(text) as Partial<Line>;
        } catch {
          continue; // a torn line: skipped
        }
        if (typeof line?.k === 'string') this.index.set(line.k, { result: line.r, segment });
      }
      this.offsets.set(segment, from + end + 1);
    } finally {
      await handle.close();
    }
  }

  private async readLegacy(key: string): Promise<MicrotaskResult | undefined> {
    let raw: string;
    try {
      raw = await readFile(legacyResultFile(this.dir, key), 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw new ResultsStoreError('RESULTS_READ_FAILED', `cannot read the result of ${key} in ${this.dir}: ${(e as Error).message}`, { cause: e });
    }
    try {
      return validResult(key, JSON.parse(raw));
    } catch {
      return undefined;
    }
  }
}
