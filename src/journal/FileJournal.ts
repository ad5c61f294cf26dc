import { EventEmitter } from 'node:events';
import { appendFile, open, readdir, readFile, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import {
  JournalError,
  parseJournalEntry,
  serializeJournalEntry,
  type Journal,
  type JournalEntry,
  type JournalFollow,
} from './Journal.js';
import { mkdirs } from '../mkdirs.js';

export interface FileJournalOptions {
  /** One `<flowId>.jsonl` file per flow in this directory. */
  dir: string;
  /** Told of every write that failed and every unreadable line skipped. */
  onError?: (error: JournalError) => void;
  /** How often a follower looks for lines written by another process (default 200 ms). */
  pollMs?: number;
}

interface Pending {
  lines: string[];
  writing: Promise<void> | undefined;
}

/** Flow ids become file names: anything else than this is refused rather than escaped. */
const SAFE_ID = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;

/**
 * The journal as one JSON line per entry, a file per flow. Appends of one flow are
 * coalesced into one write while the previous one is in flight, so a busy flow costs a
 * write per burst, not per entry; they are not fsynced (the journal is a diagnostic
 * record; the snapshot store is the durable one). A follower reads the file, then is told
 * of this process's writes at once and picks up other processes' by polling from the
 * offset it has read to.
 */
export class FileJournal implements Journal {
  private readonly pending = new Map<string, Pending>();
  private readonly written = new EventEmitter();
  private ready: Promise<unknown> | undefined;
  private closed = false;

  constructor(private readonly options: FileJournalOptions) {
    this.written.setMaxListeners(0);
  }

  append(entry: JournalEntry, snapshotJson?: string): void {
    if (this.closed) return this.report(new JournalError('JOURNAL_WRITE', `journal closed; entry of flow ${entry.flowId} dropped`));
    if (!SAFE_ID.test(entry.flowId)) {
      return this.report(new JournalError('JOURNAL_WRITE', `flow id ${JSON.stringify(entry.flowId)} cannot name a journal file`));
    }
    let pending = this.pending.get(entry.flowId);
    if (!pending) this.pending.set(entry.flowId, (pending = { lines: [], writing: undefined }));
    pending.lines.push(serializeJournalEntry(entry, snapshotJson));
    if (!pending.writing) pending.writing = this.drain(entry.flowId, pending);
  }

  async flush(): Promise<void> {
    await Promise.all([...this.pending.values()].map((p) => p.writing));
  }

  async read(flowId: string): Promise<JournalEntry[]> {
    if (!SAFE_ID.test(flowId)) return [];
    let text: string;
    try {
      text = await readFile(this.file(flowId), 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw new JournalError('JOURNAL_READ', `cannot read the journal of flow ${flowId}: ${(e as Error).message}`, { cause: e });
    }
    // A line cut short by a crash (no newline yet) is left for the next read.
    const end = text.lastIndexOf('\n') + 1;
    return this.parseLines(flowId, text.slice(0, end));
  }

  async follow(flowId: string, handler: (entry: JournalEntry) => void): Promise<JournalFollow> {
    let offset = 0;
    let stopped = false;
    let reading: Promise<void> = Promise.resolve();
    // Reads whatever was added since `offset`, whole lines only; one read at a time, so
    // the handler sees every entry once, in order.
    const catchUp = () => {
      reading = reading.then(async () => {
        if (stopped) return;
        const chunk = await this.readFrom(flowId, offset);
        if (!chunk || stopped) return;
        const end = chunk.lastIndexOf(0x0a) + 1;
        if (end === 0) return;
        offset += end;
        for (const entry of this.parseLines(flowId, chunk.subarray(0, end).toString('utf8'))) {
          if (stopped) return;
          handler(entry);
        }
      }).catch((e: unknown) => this.report(e instanceof JournalError ? e : new JournalError('JOURNAL_READ', (e as Error).message, { cause: e })));
      return reading;
    };
    const onWrite = () => void catchUp();
    this.written.on(flowId, onWrite);
    const timer = setInterval(onWrite, this.options.pollMs ?? 200);
    timer.unref();
    await catchUp();
    return {
      stop: async () => {
        stopped = true;
        clearInterval(timer);
        this.written.off(flowId, onWrite);
        await reading;
      },
    };
  }

  async remove(flowIds: readonly string[]): Promise<void> {
    for (const flowId of flowIds) {
      if (!SAFE_ID.test(flowId)) continue;
      await this.pending.get(flowId)?.writing;
      await rm(this.file(flowId), { force: true });
    }
  }

  async prune(olderThan: Date): Promise<number> {
    let names: string[];
    try {
      names = await readdir(this.options.dir);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return 0;
      throw e;
    }
    let pruned = 0;
    for (const name of names) {
      if (!name.endsWith('.jsonl') || this.pending.has(name.slice(0, -'.jsonl'.length))) continue;
      const path = join(this.options.dir, name);
      const { mtimeMs } = await stat(path).catch(() => ({ mtimeMs: Infinity }));
      if (mtimeMs >= olderThan.getTime()) continue;
      await rm(path, { force: true });
      pruned++;
    }
    return pruned;
  }

  async close(): Promise<void> {
    await this.flush();
    this.closed = true;
  }

  private async drain(flowId: string, pending: Pending): Promise<void> {
    try {
      this.ready ??= mkdirs(this.options.dir);
      await this.ready;
      while (pending.lines.length > 0) {
        const lines = pending.lines;
        pending.lines = [];
        try {
          await appendFile(this.file(flowId), `${lines.join('\n')}\n`);
          this.written.emit(flowId);
        } catch (e) {
          this.report(new JournalError('JOURNAL_WRITE', `cannot write ${lines.length} journal entries of flow ${flowId}: ${(e as Error).message}`, { cause: e }));
        }
      }
    } catch (e) {
      this.ready = undefined;
      pending.lines = [];
      this.report(new JournalError('JOURNAL_WRITE', `cannot create the journal directory ${this.options.dir}: ${(e as Error).message}`, { cause: e }));
    } finally {
      pending.writing = undefined;
      this.pending.delete(flowId);
    }
  }

  private async readFrom(flowId: string, offset: number): Promise<Buffer | undefined> {
    let handle;
    try {
      handle = await open(this.file(flowId), 'r');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw e;
    }
    try {
      const { size } = await handle.stat();
      if (size <= offset) return undefined;
      const buffer = Buffer.alloc(size - offset);
      const { bytesRead } = await handle.read(buffer, 0, buffer.length, offset);
      return buffer.subarray(0, bytesRead);
    } finally {
      await handle.close();
    }
  }

  private parseLines(flowId: string, text: string): JournalEntry[] {
    const entries: JournalEntry[] = [];
    for (const line of text.split('\n')) {
      if (line.trim() === '') continue;
      const parsed = parseJournalEntry(line);
      if ('entry' in parsed) entries.push(parsed.entry);
      else this.report(new JournalError('JOURNAL_CORRUPT_ENTRY', `skipped an unreadable entry in the journal of flow ${flowId}: ${parsed.error}`));
    }
    return entries;
  }

  private file(flowId: string) {
    return join(this.options.dir, `${flowId}.jsonl`);
  }

  private report(error: JournalError) {
    this.options.onError?.(error);
  }
}
