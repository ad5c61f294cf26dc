import type { Bus, EventLog } from '../bus/Bus.js';
import { subjects, type Subjects } from '../bus/subjects.js';
import {
  JournalError,
  latestSteps,
  parseJournalEntry,
  serializeJournalEntry,
  type Journal,
  type JournalEntry,
  type JournalFollow,
} from './Journal.js';

interface PendingEntry {
  kind: JournalEntry['kind'];
  /** The entry as JSON: one line (JSON.stringify writes no newline). */
  text: string;
  written: () => void;
}

/** A message's size past which a flow's entries of one turn go in another: well under NATS's 1 MB payload limit. */
const BATCH_BYTES = 256 * 1024;

/** Entries in order, cut where a message would grow past BATCH_BYTES (an entry larger than that goes alone). */
function batches(entries: PendingEntry[]): PendingEntry[][] {
  const out: PendingEntry[][] = [];
  let current: PendingEntry[] = [];
  let size = 0;
  for (const entry of entries) {
    if (current.length > 0 && size + entry.text.length + 1 > BATCH_BYTES) {
      out.push(current);
      current = [];
      size = 0;
    }
    current.push(entry);
    size += entry.text.length + 1;
  }
  if (current.length > 0) out.push(current);
  return out;
}

export interface BusJournalOptions {
  subjectPrefix?: string;
  /** How long entries are kept (the stream's max age); unset: kept until removed. */
  retentionMs?: number;
  onError?: (error: JournalError) => void;
}

/**
 * The journal as a JetStream stream (`history`, one subject per flow), so that any
 * process on the bus (`microtask show` on a laptop, a daemon's inspector on another
 * machine) reads what the daemon running the flow wrote. A flow's entries of one turn of
 * the event loop are published as one message (one acknowledged round trip, not one per
 * entry: about ten for a flow of one microtask), in call order on one connection, which
 * keeps a flow's entries in order without waiting for each acknowledgement. An entry over
 * the server's payload limit (1 MB by default: a very large snapshot) is not stored, and
 * reported.
 */
export class BusJournal implements Journal {
  private readonly inFlight = new Set<Promise<unknown>>();
  /** Each flow's entries appended this turn, published together at its end (writePending). */
  private readonly pending = new Map<string, PendingEntry[]>();
  private closed = false;

  private constructor(
    private readonly log: EventLog,
    private readonly names: Subjects,
    private readonly options: BusJournalOptions,
  ) {}

  static async open(bus: Bus, options: BusJournalOptions = {}): Promise<BusJournal> {
    const names = subjects(options.subjectPrefix);
    const log = await bus.eventLog(names.historyLog, {
      subjects: names.historyLogSubjects,
      ...(options.retentionMs ? { maxAgeMs: options.retentionMs } : {}),
    });
    return new BusJournal(log, names, options);
  }

  append(entry: JournalEntry, snapshotJson?: string): Promise<void> | void {
    const { flowId } = entry;
    if (this.closed) return this.report(new JournalError('JOURNAL_WRITE', `journal closed; entry of flow ${flowId} dropped`));
    let text: string;
    try {
      text = serializeJournalEntry(entry, snapshotJson);
    } catch (e) {
      return this.report(new JournalError('JOURNAL_WRITE', `cannot write a ${entry.kind} entry of flow ${flowId}: ${(e as Error).message}`, { cause: e }));
    }
    let entries = this.pending.get(flowId);
    if (!entries) {
      // Once per turn: what every flow appended meanwhile goes out then, each flow's as one message.
      if (this.pending.size === 0) setImmediate(() => this.writePending());
      entries = [];
      this.pending.set(flowId, entries);
    }
    return new Promise<void>((resolve) => entries.push({ kind: entry.kind, text, written: resolve }));
  }

  /**
   * Publishes the entries appended since the last call: a flow's as one message (JSON lines,
   * in order), or a few when they are large, so that none goes over the server's payload limit
   * because of the others. Published in call order on one connection: a flow's messages stay
   * in order without waiting for each acknowledgement.
   */
  private writePending(): void {
    for (const [flowId, entries] of this.pending) {
      for (const batch of batches(entries)) {
        let written: Promise<unknown>;
        try {
          written = this.log.append(this.names.flowHistory(flowId), batch.map((e) => e.text).join('\n'));
        } catch (e) {
          written = Promise.reject(e);
        }
        const tracked = written
          .catch((e: unknown) => {
            const what = batch.length === 1 ? `a ${batch[0]!.kind} entry` : `${batch.length} entries (${batch.map((x) => x.kind).join(', ')})`;
            this.report(new JournalError('JOURNAL_WRITE', `cannot write ${what} of flow ${flowId}: ${(e as Error).message}`, { cause: e }));
          })
          .finally(() => {
            this.inFlight.delete(tracked);
            for (const e of batch) e.written();
          });
        this.inFlight.add(tracked);
      }
    }
    this.pending.clear();
  }

  async flush(): Promise<void> {
    this.writePending();
    await Promise.all([...this.inFlight]);
  }

  async read(flowId: string): Promise<JournalEntry[]> {
    if (!this.validId(flowId)) return [];
    let messages;
    try {
      messages = await this.log.read(this.names.flowHistory(flowId));
    } catch (e) {
      throw new JournalError('JOURNAL_READ', `cannot read the journal of flow ${flowId}: ${(e as Error).message}`, { cause: e });
    }
    return latestSteps(messages.flatMap((m) => this.parse(flowId, m.string())));
  }

  async follow(flowId: string, handler: (entry: JournalEntry) => void): Promise<JournalFollow> {
    if (!this.validId(flowId)) return { stop: async () => {} };
    let stopped = false;
    const subscription = await this.log.replay(this.names.flowHistory(flowId), async (m) => {
      if (stopped) return;
      for (const entry of this.parse(flowId, m.string())) handler(entry);
    });
    return {
      stop: async () => {
        stopped = true;
        await subscription.unsubscribe();
      },
    };
  }

  async remove(flowIds: readonly string[]): Promise<void> {
    await this.flush();
    for (const flowId of flowIds) if (this.validId(flowId)) await this.log.purge(this.names.flowHistory(flowId));
  }

  /** The stream's max age prunes it (set from the retention); nothing to do here. */
  async prune(): Promise<number> {
    return 0;
  }

  async close(): Promise<void> {
    await this.flush();
    this.closed = true;
  }

  /** A message's entries: one per line (a message written before entries were batched holds one). */
  private parse(flowId: string, text: string): JournalEntry[] {
    return text.split('\n').flatMap((line) => {
      const parsed = parseJournalEntry(line);
      if ('entry' in parsed) return [parsed.entry];
      this.report(new JournalError('JOURNAL_CORRUPT_ENTRY', `skipped an unreadable entry in the journal of flow ${flowId}: ${parsed.error}`));
      return [];
    });
  }

  /** A flow id is one subject token: no dots, spaces or wildcards. */
  private validId(flowId: string) {
    return /^[A-Za-z0-9_-]+$/.test(flowId);
  }

  private report(error: JournalError) {
    this.options.onError?.(error);
  }
}
