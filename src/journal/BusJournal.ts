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

export interface BusJournalOptions {
  subjectPrefix?: string;
  /** How long entries are kept (the stream's max age); unset: kept until removed. */
  retentionMs?: number;
  onError?: (error: JournalError) => void;
}

/**
 * The journal as a JetStream stream (`history`, one subject per flow), so that any
 * process on the bus (`microtask show` on a laptop, a daemon's inspector on another
 * machine) reads what the daemon running the flow wrote. Appends are published in call
 * order on one connection, which keeps a flow's entries in order without waiting for
 * each acknowledgement. An entry over the server's payload limit (1 MB by default: a very
 * large snapshot) is not stored, and reported.
 */
export class BusJournal implements Journal {
  private readonly inFlight = new Set<Promise<unknown>>();
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
    if (this.closed) return this.report(new JournalError('JOURNAL_WRITE', `journal closed; entry of flow ${entry.flowId} dropped`));
    let written: Promise<unknown>;
    try {
      written = this.log.append(this.names.flowHistory(entry.flowId), serializeJournalEntry(entry, snapshotJson));
    } catch (e) {
      written = Promise.reject(e);
    }
    const tracked = written
      .catch((e: unknown) =>
        this.report(new JournalError('JOURNAL_WRITE', `cannot write a ${entry.kind} entry of flow ${entry.flowId}: ${(e as Error).message}`, { cause: e })),
      )
      .finally(() => this.inFlight.delete(tracked));
    this.inFlight.add(tracked);
    return tracked.then(() => undefined);
  }

  async flush(): Promise<void> {
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

  private parse(flowId: string, text: string): JournalEntry[] {
    const parsed = parseJournalEntry(text);
    if ('entry' in parsed) return [parsed.entry];
    this.report(new JournalError('JOURNAL_CORRUPT_ENTRY', `skipped an unreadable entry in the journal of flow ${flowId}: ${parsed.error}`));
    return [];
  }

  /** A flow id is one subject token: no dots, spaces or wildcards. */
  private validId(flowId: string) {
    return /^[A-Za-z0-9_-]+$/.test(flowId);
  }

  private report(error: JournalError) {
    this.options.onError?.(error);
  }
}
