import { randomBytes } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { readdir } from 'node:fs/promises';
import { committed, legacyDirs, LmdbStore, quiet, type LmdbDatabases } from '../persistence/LmdbStore.js';
import { isValidFlowId, type FlowStep } from '../persistence/SnapshotStore.js';
import { FileJournal } from './FileJournal.js';
import {
  JournalError,
  parseJournalEntry,
  serializeJournalEntry,
  type Journal,
  type JournalEntry,
  type JournalFollow,
} from './Journal.js';

export interface LmdbJournalOptions {
  /** Told of every write that failed and every unreadable entry skipped. */
  onError?: (error: JournalError) => void;
  /** How often a follower looks for entries written by another process (default 200 ms). */
  pollMs?: number;
  /** Journal files of earlier versions (`<stateDir>/journal/*.jsonl`): read before the database's entries, pruned and removed with them. */
  legacy?: FileJournal;
}

/**
 * The journal in the embedded database (LmdbStore), beside the snapshot store's flows and
 * steps: each entry under [flowId, time in µs, writer], so a flow's entries read back in
 * the order they were appended (per process: the time never goes back there), and two
 * processes writing one flow (a daemon, and `microtask cancel`) never overwrite each
 * other. Appends are plain lmdb-js writes: those of an event-loop turn share one commit
 * with the flows' saves; they are not waited for (the journal is a diagnostic record).
 * The entries one flow appends before the process's next tick are one value, in the order
 * appended, one per line (JSON text holds no raw newline): a flow of one microtask
 * journals 8 entries in 3 writes, a feedback loop 28 in 8. Each lmdb-js write costs the
 * main thread more than serializing an entry does.
 *
 * A step the snapshot store already holds (LmdbSnapshotStore writes each step with the
 * record that makes it durable) is journaled as a reference to it, not a second copy of
 * its snapshot; and since the host journals a step only after its save, a process killed
 * in between leaves a step saved but not journaled. Reads fill such gaps from the store's
 * steps, so the journal's step numbers have no gap across crashes.
 *
 * A follower reads what is stored, then is told of this process's writes once committed
 * and polls for other processes' (looking back a few seconds, as a commit of another
 * process may land with an earlier time than one already read).
 */
export class LmdbJournal implements Journal {
  private readonly written = new EventEmitter();
  private readonly writer = randomBytes(4).toString('hex');
  private readonly touched = new Map<string, number>();
  /** The flows whose retention time this process wrote, and when (ms): written again only TOUCH_EVERY_MS later. */
  private readonly touchedAt = new Map<string, number>();
  private sweptAt = Date.now();
  /** Entries appended and not yet written, per flow, in order (written at the next tick). */
  private readonly pending = new Map<string, Array<{ kind: JournalEntry['kind']; text: string }>>();
  private last: Promise<unknown> = Promise.resolve();
  private closed = false;

  constructor(
    private readonly db: LmdbStore,
    private readonly options: LmdbJournalOptions = {},
  ) {
    this.written.setMaxListeners(0);
  }

  /**
   * The journal of a state directory, on a handle of its own (closed with the journal),
   * reading the journal files of earlier versions there when there are any.
   */
  static async open(stateDir: string, options: Omit<LmdbJournalOptions, 'legacy'> = {}): Promise<LmdbJournal> {
    const dir = legacyDirs(stateDir).journal;
    const names = await readdir(dir).catch(() => [] as string[]);
    const legacy = names.some((n) => n.endsWith('.jsonl')) ? { legacy: new FileJournal({ dir, ...(options.onError ? { onError: options.onError } : {}) }) } : {};
    return new LmdbJournal(await LmdbStore.open(stateDir), { ...options, ...legacy });
  }

  append(entry: JournalEntry, snapshotJson?: string, stepStored?: boolean): void {
    const { flowId } = entry;
    if (this.closed) return this.report(new JournalError('JOURNAL_WRITE', `journal closed; entry of flow ${flowId} dropped`));
    if (!isValidFlowId(flowId)) return this.report(new JournalError('JOURNAL_WRITE', `flow id ${JSON.stringify(flowId)} cannot name a journal`));
    let text: string;
    try {
      // The stores found the disk full: this write would fail its commit (and the saves' with it).
      if (this.db.diskFull) throw new Error(`ENOSPC: no space left on ${this.db.path}`);
      const { steps } = this.dbs;
      // Looked up only when the caller cannot say (a lookup per step was 3% of a flow's CPU);
      // a reference whose step is not there reads as nothing, as one deleted with its flow.
      text = entry.kind === 'step' && (stepStored === true || steps.doesExist([flowId, entry.step])) ? stepRef(entry.step) : serializeJournalEntry(entry, snapshotJson);
    } catch (e) {
      return this.failed(flowId, [entry.kind], e);
    }
    let entries = this.pending.get(flowId);
    if (!entries) {
      if (this.pending.size === 0) process.nextTick(() => this.writePending());
      entries = [];
      this.pending.set(flowId, entries);
    }
    entries.push({ kind: entry.kind, text });
  }

  /** Writes the entries appended since the last call: each flow's as one value. */
  private writePending() {
    for (const [flowId, entries] of this.pending) {
      let write: Promise<unknown>;
      try {
        const at = nextTime();
        write = committed(this.dbs.journal.put([flowId, at, this.writer], entries.map((e) => e.text).join('\n')));
        this.touch(flowId, at);
      } catch (e) {
        write = Promise.reject(e);
      }
      this.last = write.then(
        () => this.written.emit(flowId),
        (e: unknown) => this.failed(flowId, entries.map((x) => x.kind), e),
      );
    }
    this.pending.clear();
  }

  private failed(flowId: string, kinds: ReadonlyArray<JournalEntry['kind']>, e: unknown) {
    const what = kinds.length === 1 ? `a ${kinds[0]} entry` : `${kinds.length} entries (${kinds.join(', ')})`;
    this.report(new JournalError('JOURNAL_WRITE', `cannot write ${what} of flow ${flowId} in ${this.db.path}: ${(e as Error).message}`, { cause: e }));
  }

  async flush(): Promise<void> {
    this.writePending();
    // Writes commit in the order they were issued: the last one settled, all have.
    for (let last; last !== this.last; ) await (last = this.last);
  }

  async read(flowId: string): Promise<JournalEntry[]> {
    if (!isValidFlowId(flowId)) return [];
    const resolver = new StepResolver(flowId, this.dbs.steps);
    const entries = (await this.options.legacy?.read(flowId)) ?? [];
    for (const entry of entries) resolver.accept(entry);
    const out = [...entries];
    try {
      for (const { value } of this.dbs.journal.getRange(flowRange(flowId))) out.push(...resolver.push(value, (e) => this.report(e)));
      out.push(...resolver.rest());
    } catch (e) {
      throw new JournalError('JOURNAL_READ', `cannot read the journal of flow ${flowId} in ${this.db.path}: ${(e as Error).message}`, { cause: e });
    }
    return out;
  }

  async follow(flowId: string, handler: (entry: JournalEntry) => void): Promise<JournalFollow> {
    if (!isValidFlowId(flowId)) return { stop: async () => {} };
    const resolver = new StepResolver(flowId, this.dbs.steps);
    let stopped = false;
    for (const entry of (await this.options.legacy?.read(flowId)) ?? []) {
      resolver.accept(entry);
      handler(entry);
    }
    // Keys delivered within the look-back window, so that a re-read delivers nothing twice.
    const seen = new Map<string, number>();
    let newest = 0;
    const catchUp = () => {
      if (stopped) return;
      try {
        const from = Math.max(0, newest - LOOK_BACK_US);
        for (const { key, value } of this.dbs.journal.getRange({ start: [flowId, from], end: [flowId, Number.MAX_SAFE_INTEGER] })) {
          const [, at, writer] = key;
          const id = `${at}/${writer}`;
          if (seen.has(id)) continue;
          seen.set(id, at);
          newest = Math.max(newest, at);
          for (const entry of resolver.push(value, (e) => this.report(e))) {
            if (stopped) return;
            handler(entry);
          }
        }
        for (const [id, at] of seen) if (at < newest - LOOK_BACK_US) seen.delete(id);
      } catch (e) {
        this.report(new JournalError('JOURNAL_READ', `cannot follow the journal of flow ${flowId}: ${(e as Error).message}`, { cause: e }));
      }
    };
    this.written.on(flowId, catchUp);
    const timer = setInterval(catchUp, this.options.pollMs ?? 200);
    timer.unref();
    catchUp();
    return {
      stop: async () => {
        stopped = true;
        clearInterval(timer);
        this.written.off(flowId, catchUp);
      },
    };
  }

  async remove(flowIds: readonly string[]): Promise<void> {
    await this.flush();
    const { journal, journalFlows } = this.dbs;
    const removals: Promise<unknown>[] = [];
    for (const flowId of flowIds) {
      if (!isValidFlowId(flowId)) continue;
      for (const key of journal.getKeys(flowRange(flowId))) removals.push(committed(journal.remove(key)));
      removals.push(committed(journalFlows.remove(flowId)));
      // Written to again, it is indexed again.
      this.touchedAt.delete(flowId);
    }
    await Promise.all(removals);
    await this.options.legacy?.remove(flowIds);
  }

  async prune(olderThan: Date): Promise<number> {
    await this.flush();
    const { journal, journalFlows } = this.dbs;
    const limit = olderThan.getTime() * 1000;
    const removals: Promise<boolean>[] = [];
    for (const { key: flowId, value: at, version } of journalFlows.getRange({ versions: true })) {
      if (at >= limit || version === undefined) continue;
      const keys = Array.from(journal.getKeys(flowRange(flowId)));
      this.touchedAt.delete(flowId);
      // At the version read: a flow written to meanwhile (by any process) keeps its journal.
      removals.push(
        committed(
          journalFlows.ifVersion(flowId, version, () => {
            quiet(journalFlows.remove(flowId));
            for (const k of keys) quiet(journal.remove(k));
          }),
        ),
      );
    }
    const pruned = (await Promise.all(removals)).filter(Boolean).length;
    return pruned + ((await this.options.legacy?.prune(olderThan)) ?? 0);
  }

  /** Waits for the writes in flight, then releases its handle on the database. */
  async close(): Promise<void> {
    if (this.closed) return;
    await this.flush();
    this.closed = true;
    await this.options.legacy?.close();
    await this.db.close();
  }

  private get dbs(): LmdbDatabases {
    return this.db.dbs;
  }

  /**
   * When the flow's journal was last written to, for retention: once per flow and turn, and
   * then not again for TOUCH_EVERY_MS (a flow writes in bursts of a few turns, and each of
   * those index writes cost as much as the entries). So `prune` sees a flow's last write to
   * within that time, and may take a journal written that much after its cut.
   */
  private touch(flowId: string, at: number) {
    const now = Date.now();
    if (now - this.sweptAt >= TOUCH_EVERY_MS) {
      for (const [id, when] of this.touchedAt) if (now - when >= TOUCH_EVERY_MS) this.touchedAt.delete(id);
      this.sweptAt = now;
    }
    const last = this.touchedAt.get(flowId);
    if (last !== undefined && now - last < TOUCH_EVERY_MS) return;
    this.touchedAt.set(flowId, now);
    if (this.touched.size === 0) {
      queueMicrotask(() => {
        const { journalFlows } = this.dbs;
        for (const [id, time] of this.touched) quiet(journalFlows.put(id, time, time));
        this.touched.clear();
      });
    }
    this.touched.set(flowId, at);
  }

  private report(error: JournalError) {
    try {
      this.options.onError?.(error);
    } catch {
      // the callback's own failure
    }
  }
}

/** How long a flow's retention time may lag its journal's last write (ms): see `touch`. */
const TOUCH_EVERY_MS = 30_000;

/** How far back a follower looks again for entries another process committed late (µs). */
const LOOK_BACK_US = 5_000_000;

let lastTime = 0;
/** Microseconds since the epoch, strictly increasing in this process (the clock may step back). */
function nextTime(): number {
  lastTime = Math.max(Date.now() * 1000, lastTime + 1);
  return lastTime;
}

function flowRange(flowId: string) {
  return { start: [flowId] as unknown as [string, number, string], end: [flowId, Number.MAX_SAFE_INTEGER] as unknown as [string, number, string] };
}

const STEP_REF = '{"ref":"step","step":';
const stepRef = (step: number) => `${STEP_REF}${step}}`;

/**
 * Turns a flow's stored journal texts into entries, in order: a step reference becomes the
 * snapshot store's step, and the steps saved but never journaled (the process was killed
 * between the save and the journal's write) are put back where they belong: before the
 * next step, or before the flow resumed or ended (those saved before it), or at the end.
 */
class StepResolver {
  private lastStep = 0;
  private readonly delivered = new Set<number>();

  constructor(
    private readonly flowId: string,
    private readonly steps: LmdbDatabases['steps'],
  ) {}

  /** An entry delivered by other means (a legacy file): its step counts as journaled. */
  accept(entry: JournalEntry) {
    if (entry.kind === 'step') this.mark(entry.step);
  }

  /** The entries of one stored value: one entry, or a flow's entries of one tick, one per line. */
  push(value: string, report: (e: JournalError) => void): JournalEntry[] {
    if (!value.includes('\n')) return this.pushOne(value, report);
    return value.split('\n').flatMap((text) => this.pushOne(text, report));
  }

  private pushOne(text: string, report: (e: JournalError) => void): JournalEntry[] {
    if (text.startsWith(STEP_REF)) {
      const step = Number(text.slice(STEP_REF.length, -1));
      if (this.delivered.has(step)) return [];
      const out = this.missing(step - 1);
      const stored = this.steps.get([this.flowId, step]);
      // Gone with its flow (deleted, moved aside): nothing to show.
      if (stored) out.push(stepEntry(this.flowId, stored));
      this.mark(step);
      return out;
    }
    const parsed = parseJournalEntry(text);
    if ('error' in parsed) {
      report(new JournalError('JOURNAL_CORRUPT_ENTRY', `skipped an unreadable entry in the journal of flow ${this.flowId}: ${parsed.error}`));
      return [];
    }
    const { entry } = parsed;
    if (entry.kind === 'step') {
      if (this.delivered.has(entry.step)) return [];
      const out = this.missing(entry.step - 1);
      this.mark(entry.step);
      return [...out, entry];
    }
    // The steps saved before the flow resumed (or ended) belong before it; those of the resumed run after.
    // A resume's first step may share its millisecond: only those strictly before it are the earlier run's.
    if (entry.kind === 'flow' && entry.phase !== 'started') {
      return [...this.missing(Number.MAX_SAFE_INTEGER, Date.parse(entry.at) + (entry.phase === 'resumed' ? 0 : 1)), entry];
    }
    return [entry];
  }

  /** The steps stored after the last one delivered. */
  rest(): JournalEntry[] {
    return this.missing(Number.MAX_SAFE_INTEGER);
  }

  /** The stored steps after the last delivered, up to step `upTo` and before time `until` (ms), not delivered yet. */
  private missing(upTo: number, until = Infinity): JournalEntry[] {
    if (upTo <= this.lastStep) return [];
    const out: JournalEntry[] = [];
    const end = Math.min(upTo + 1, Number.MAX_SAFE_INTEGER);
    for (const { value } of this.steps.getRange({ start: [this.flowId, this.lastStep + 1], end: [this.flowId, end] })) {
      if (this.delivered.has(value.step)) continue;
      if (Date.parse(value.at) >= until) break;
      out.push(stepEntry(this.flowId, value));
      this.mark(value.step);
    }
    return out;
  }

  private mark(step: number) {
    this.delivered.add(step);
    this.lastStep = Math.max(this.lastStep, step);
  }
}

function stepEntry(flowId: string, step: FlowStep): JournalEntry {
  const { snapshotJson, ...rest } = step;
  return { kind: 'step', flowId, ...rest, snapshot: JSON.parse(snapshotJson) as unknown };
}
