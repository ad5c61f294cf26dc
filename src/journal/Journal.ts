import { z } from 'zod';
import { MicrotaskResultSchema } from '../contracts/microtask.js';

/**
 * The flow journal: what happened in a flow, in order, for people (`microtask show`, the
 * inspector's log and time travel, the live progress of `microtask build`). Where the
 * snapshot store keeps only a flow's latest snapshot (to resume it), the journal keeps
 * the history: each transition of each machine as it happens, each saved snapshot (a
 * step: several transitions in quick succession share one save), each microtask with
 * its prompt, answer, tokens and duration, and the flow's start, resumes and end.
 *
 * It is a diagnostic record, not the source of truth: entries are written after the
 * snapshot they describe is saved, in order per flow, without holding the flow up; a
 * crash can lose the last few (the flow itself resumes from the snapshot store). Two
 * implementations, one contract suite (test/journal/contract.ts): files (embedded, one
 * JSON line per entry) and a JetStream stream (NATS).
 */

const base = { flowId: z.string(), at: z.iso.datetime({ offset: true }) };

/** Where an actor sits in its flow: `root`, or the child's key below the flow's (`module/auth/generate#1`). */
const actor = z.string();

export const JournalEntrySchema = z.discriminatedUnion('kind', [
  z.object({
    ...base,
    kind: z.literal('flow'),
    phase: z.enum(['started', 'resumed', 'ended']),
    pattern: z.string(),
    status: z.enum(['running', 'done', 'failed', 'cancelled']),
    input: z.unknown().optional(),
    output: z.unknown().optional(),
    error: z.object({ code: z.string(), message: z.string() }).optional(),
  }),
  z.object({
    ...base,
    /** A machine of the flow (the root, or a child flow) took a transition: as it happened, before it is saved. */
    kind: z.literal('transition'),
    actor,
    machine: z.string(),
    state: z.unknown(),
    event: z.string(),
  }),
  z.object({
    ...base,
    /** A snapshot of the flow was saved (after one or more transitions): a point to travel back to. */
    kind: z.literal('step'),
    /** 1, 2, … per flow across resumes: the position for time travel. */
    step: z.number().int().positive(),
    actor,
    /** The id of the machine that moved (the root's, or a child flow's). */
    machine: z.string(),
    /** Its state value after the transition. */
    state: z.unknown(),
    /** The event that caused it (`xstate.done.actor.generate`, …). */
    event: z.string(),
    /** The root's state value. */
    rootState: z.unknown(),
    /** The persisted snapshot of the whole flow, as saved to the snapshot store. */
    snapshot: z.unknown(),
  }),
  z.object({
    ...base,
    kind: z.literal('microtask'),
    phase: z.enum(['started', 'finished']),
    actor,
    key: z.string(),
    taskType: z.string(),
    /** On `started`: what the model is asked. */
    system: z.string().optional(),
    prompt: z.string().optional(),
    data: z.unknown().optional(),
    /** On `finished`: the result envelope (answer or error and fallback, tokens, duration, cached). */
    result: MicrotaskResultSchema.optional(),
  }),
]);
export type JournalEntry = z.infer<typeof JournalEntrySchema>;
/** An entry as written: `at` and `flowId` are set by the writer. */
export type JournalEntryKind = JournalEntry['kind'];

export interface JournalFollow {
  stop(): Promise<void>;
}

export interface Journal {
  /**
   * Queues an entry; never throws and never waits: entries of one flow are written in the
   * order they were appended. A write that fails is reported to the journal's `onError`.
   * `snapshotJson`, when given, is the step's snapshot already serialized (it is written
   * as is, not serialized again). A journal that can tell when the entry is stored returns
   * a promise that resolves then (or once the write failed: it never rejects): a host
   * whose store keeps no steps awaits a step's entry before announcing the step.
   * `stepStored`: the entry is a step the snapshot store has saved already (a journal
   * beside that store, LmdbJournal, then refers to it without looking it up).
   */
  append(entry: JournalEntry, snapshotJson?: string, stepStored?: boolean): void | Promise<void>;
  /** Resolves once every entry appended so far is written (or failed). */
  flush(): Promise<void>;
  /** The flow's entries, oldest first; [] for a flow with none. Unreadable lines are skipped and reported. */
  read(flowId: string): Promise<JournalEntry[]>;
  /**
   * Every stored entry of the flow, oldest first, then each new one as it is written,
   * until `stop`. The handler is called in order, never concurrently.
   */
  follow(flowId: string, handler: (entry: JournalEntry) => void): Promise<JournalFollow>;
  /** Deletes the journals of these flows. */
  remove(flowIds: readonly string[]): Promise<void>;
  /** Deletes the journals not written to since `olderThan` (retention); how many went. */
  prune(olderThan: Date): Promise<number>;
  close(): Promise<void>;
}

export class JournalError extends Error {
  override readonly name = 'JournalError';
  constructor(
    readonly code: 'JOURNAL_WRITE' | 'JOURNAL_CORRUPT_ENTRY' | 'JOURNAL_READ',
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** Parses one stored entry; undefined (and the reason) when it is not a valid entry. */
export function parseJournalEntry(text: string): { entry: JournalEntry } | { error: string } {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    return { error: `not JSON: ${(e as Error).message}` };
  }
  const parsed = JournalEntrySchema.safeParse(json);
  return parsed.success ? { entry: parsed.data } : { error: parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ') };
}

/** Serializes an entry, splicing in the already-serialized snapshot of a step. */
export function serializeJournalEntry(entry: JournalEntry, snapshotJson?: string): string {
  if (entry.kind !== 'step' || snapshotJson === undefined) return JSON.stringify(entry);
  const { snapshot: _ignored, ...rest } = entry;
  const head = JSON.stringify(rest);
  return `${head.slice(0, -1)},"snapshot":${snapshotJson}}`;
}

/**
 * A flow's entries with each step's last entry only, where it stands: a process that died
 * after journaling a step and before saving it leaves an entry its resumed run writes again
 * (with a store that keeps only the last snapshot, steps are journaled with their save).
 */
export function latestSteps(entries: readonly JournalEntry[]): JournalEntry[] {
  const last = new Map<number, number>();
  entries.forEach((entry, i) => entry.kind === 'step' && last.set(entry.step, i));
  if (last.size === entries.filter((e) => e.kind === 'step').length) return [...entries];
  return entries.filter((entry, i) => entry.kind !== 'step' || last.get(entry.step) === i);
}
