import { z } from 'zod';
import { FlowWaitSchema } from '../contracts/waits.js';
import { MAX_RECORD_DEPTH } from '../jsonInput.js';

/**
 * The snapshot-store contract: where a flow's persisted XState snapshot lives between
 * transitions, so that a daemon that dies resumes every unfinished flow where it stood.
 * Two implementations keep the same semantics, checked by one contract suite
 * (test/persistence/contract.ts):
 *
 * - FileSnapshotStore: one file per flow (the embedded default, one daemon per directory);
 * - KvSnapshotStore: a KV bucket of the bus (NATS JetStream KV for several daemons).
 *
 * Ownership is optimistic: every entry has a revision, and `save` names the revision it
 * expects to replace. A save that finds another revision was beaten by another owner
 * (another daemon took the flow over, or a stale actor of this one): it must stop
 * driving that flow, never retry blindly.
 *
 * Flow ids are 1–200 letters, digits, `_` and `-`: they become file names and KV key
 * tokens. Records hold JSON data only; `save` rejects anything JSON would silently
 * change (a Date, a Map, an Error, NaN, undefined in an array), naming where it is.
 */

export const FlowStatusSchema = z.enum(['running', 'done', 'failed', 'cancelled']);
export type FlowStatus = z.infer<typeof FlowStatusSchema>;

/** The statuses of a flow that will not move again; what `prune` deletes by default. */
export const FINISHED_STATUSES: readonly FlowStatus[] = ['done', 'failed', 'cancelled'];

const FLOW_ID = /^[A-Za-z0-9_-]{1,200}$/;

/** A value that must be present (JSON has no undefined). */
const present = () => z.unknown().refine((v) => v !== undefined, { message: 'is missing' });

export const FlowSnapshotRecordSchema = z.object({
  flowId: z.string().regex(FLOW_ID, 'is not a valid flow id'),
  /** The pattern the flow runs (`toolBuilder`, `feedbackLoop`, …). */
  pattern: z.string().min(1),
  /** The root machine's id and version: a snapshot of an unknown version is not resumed. */
  machineId: z.string().min(1),
  machineVersion: z.number().int().nonnegative(),
  status: FlowStatusSchema,
  /** The root machine's state value, for listings (the full truth is in `snapshot`). */
  state: present(),
  /** ISO 8601, when the record was made; `prune` compares it. */
  updatedAt: z.iso.datetime({ offset: true }),
  /** `actor.getPersistedSnapshot()`, JSON. */
  snapshot: present(),
  requestId: z.string().optional(),
  /** The seq of the flow's last announced event: a resumed flow goes on from it, without gaps. */
  seq: z.number().int().nonnegative().optional(),
  /** How many snapshots of the flow were saved: its journal's step number, which a resumed flow goes on from. */
  steps: z.number().int().nonnegative().optional(),
  /** The daemon driving the flow, and until when (ISO): after that, another may take it over. */
  owner: z.string().optional(),
  leaseUntil: z.iso.datetime({ offset: true }).optional(),
  output: z.unknown().optional(),
  error: z.object({ code: z.string(), message: z.string() }).optional(),
  /** What the flow waits for (a person, an outside event), as of its last step; absent: nothing. */
  waiting: z.array(FlowWaitSchema).optional(),
  /** The ids of the last events applied to the flow: one sent again is not applied twice. */
  received: z.array(z.string()).optional(),
  /** The ids of the last events refused (sent straight to the inbox, not what it waited for): never applied later. */
  refused: z.array(z.string()).optional(),
  /**
   * Set when the flow only waits (src/flowSleep.ts): it may be resumed asleep, from its
   * record alone, waking at `wakeAt` (epoch ms, its earliest deadline) if it has one.
   */
  sleep: z.object({ wakeAt: z.number().optional() }).optional(),
});
export type FlowSnapshotRecord = z.infer<typeof FlowSnapshotRecordSchema>;

/** What `list` gives for each flow: enough for `microtask flows`, without the snapshot. */
export interface FlowSummary {
  flowId: string;
  pattern: string;
  status: FlowStatus;
  state: unknown;
  updatedAt: string;
}

export interface StoredSnapshot {
  record: FlowSnapshotRecord;
  /** Pass it to the next `save` of this flow. */
  revision: number;
  /**
   * Read without its snapshot (`loadAll` of a flow that sleeps: its record is all a resume
   * needs); `load` it for the whole record.
   */
  snapshotOmitted?: boolean;
}

export interface ListFilter {
  /** Only flows with this status (or one of these). */
  status?: FlowStatus | readonly FlowStatus[];
}

export interface SnapshotStoreOptions {
  /**
   * Called for each corrupt entry that `list` or `prune` skips (they never reject for
   * one). Typically: log it and `moveAside` the flow. What it throws is ignored.
   */
  onCorrupt?: (error: CorruptSnapshotError) => void;
}

/**
 * One transition of one actor of a flow, as saved: the flow's whole persisted snapshot
 * after it, and what caused it. A flow's steps are numbered 1, 2, … across resumes.
 */
export interface FlowStep {
  step: number;
  /** ISO 8601, when the transition happened. */
  at: string;
  /** `root`, or the path of the child actor that moved (`module-auth/generate`). */
  actor: string;
  /** The id of the machine that moved. */
  machine: string;
  /** Its state value after the transition. */
  state: unknown;
  /** The event that caused it. */
  event: string;
  /** The root's state value after it. */
  rootState: unknown;
  /** `JSON.stringify` of the flow's persisted snapshot after the transition (serialized once, by the host). */
  snapshotJson: string;
}

/**
 * A checked record as JSON text. When the last step saved with it is the record's (the
 * host saves them so) its snapshot is that step's JSON, spliced in as it is: serializing
 * the snapshot again was a fifth of a save's cost.
 */
export function recordJson(checked: FlowSnapshotRecord, steps: readonly FlowStep[] | undefined): string {
  const last = steps?.at(-1);
  if (last === undefined || typeof last.snapshotJson !== 'string' || last.step !== checked.steps) return JSON.stringify(checked);
  const head = JSON.stringify({ ...checked, snapshot: undefined });
  return `${head.slice(0, -1)}${head.length > 2 ? ',' : ''}"snapshot":${last.snapshotJson}}`;
}

export interface SaveOptions {
  /**
   * The steps this save makes durable, in order (the record is the last one's). A store
   * that keeps history (`keepsSteps`) writes them in the same atomic write as the record;
   * the others keep the latest record only (the journal keeps the history then).
   */
  steps?: readonly FlowStep[];
}

export interface SnapshotStore {
  /** Whether `save` keeps each step's snapshot (and `readSteps` gives them back). */
  readonly keepsSteps?: boolean;
  /** The flow's saved steps, oldest first ([] when none). Only for stores that keep steps. */
  readSteps?(flowId: string): Promise<FlowStep[]>;
  /**
   * Writes `record` (under `record.flowId`) if the stored revision is `expectedRevision`;
   * `null` means the flow must not exist yet. Resolves with the new revision once the
   * record is durable. Rejects with SnapshotConflictError when the stored revision
   * differs (another owner wrote it; the stored record is left untouched), with
   * InvalidSnapshotError when the record is not JSON data of the right shape, and with
   * CorruptSnapshotError when a corrupt entry is in the way (move it aside first).
   * Saves of one flow may be issued concurrently: each is checked against what the
   * previous one left, so of two saves expecting the same revision exactly one wins.
   */
  save(record: FlowSnapshotRecord, expectedRevision: number | null, options?: SaveOptions): Promise<number>;
  /**
   * The flow's record and revision, or undefined when there is none. Rejects with
   * CorruptSnapshotError (code `SNAPSHOT_CORRUPT`, with the reason) when the entry is not
   * JSON or not of the right shape.
   */
  load(flowId: string): Promise<StoredSnapshot | undefined>;
  /** Summaries, oldest `updatedAt` first; corrupt entries are skipped and reported to `onCorrupt`. */
  /**
   * Every flow's record and revision (those of these statuses), read in one pass where the
   * store can (a resume of every flow at a daemon's start). A store may leave out the
   * snapshot of a flow whose record says it sleeps (`snapshotOmitted`). Optional: `list`
   * then `load` otherwise.
   */
  loadAll?(filter?: ListFilter): Promise<StoredSnapshot[]>;
  list(filter?: ListFilter): Promise<FlowSummary[]>;
  /** Removes the flow; nothing happens when there is none. */
  delete(flowId: string): Promise<void>;
  /**
   * Keeps the flow's entry, as it is and with `reason`, where a person can look at it,
   * out of the way of `load` and `list` (which then no longer see the flow). Nothing
   * happens when there is none. Meant for corrupt entries: it does not check revisions.
   */
  moveAside(flowId: string, reason: string): Promise<void>;
  /**
   * Deletes the flows whose status is one of `statuses` and whose `updatedAt` is before
   * `olderThan`; resolves with how many. Unfinished flows are never pruned by default.
   */
  prune(olderThan: Date, statuses?: readonly FlowStatus[]): Promise<number>;
}

// ---------------------------------------------------------------------------------
// Errors: a code to switch on, a message to act on.

export type SnapshotStoreErrorCode = 'SNAPSHOT_CONFLICT' | 'SNAPSHOT_CORRUPT' | 'SNAPSHOT_INVALID' | 'INVALID_FLOW_ID';

export class SnapshotStoreError extends Error {
  override readonly name: string = 'SnapshotStoreError';
  constructor(
    readonly code: SnapshotStoreErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** Another owner saved the flow since this one read it: stop driving it here. */
export class SnapshotConflictError extends SnapshotStoreError {
  override readonly name = 'SnapshotConflictError';
  constructor(
    readonly flowId: string,
    readonly expectedRevision: number | null,
    /** What the store holds: null when the flow is not there, undefined when unknown. */
    readonly actualRevision: number | null | undefined,
    options?: { cause?: unknown },
  ) {
    const expected = expectedRevision === null ? 'expected it not to exist yet' : `expected revision ${expectedRevision}`;
    const actual =
      actualRevision === undefined
        ? 'the store holds another revision'
        : actualRevision === null
          ? 'the store has no such flow (deleted or moved aside)'
          : `the store is at revision ${actualRevision}`;
    super(
      'SNAPSHOT_CONFLICT',
      `flow ${flowId} was written by another owner: this save ${expected}, but ${actual}. ` +
        'Stop driving this flow here; load it again to take it over.',
      options,
    );
  }
}

/** The stored entry is not JSON or not of the right shape: it cannot be resumed. */
export class CorruptSnapshotError extends SnapshotStoreError {
  override readonly name = 'CorruptSnapshotError';
  constructor(
    readonly flowId: string,
    /** What is wrong with it, for the log and for `moveAside`. */
    readonly reason: string,
    /** Where it is (a file, a KV key). */
    readonly location: string,
    options?: { cause?: unknown },
  ) {
    super(
      'SNAPSHOT_CORRUPT',
      `the snapshot of flow ${flowId} (${location}) is corrupt: ${reason}. ` +
        'It cannot be resumed: move it aside (it is kept for inspection) and start the flow again if needed.',
      options,
    );
  }
}

/** The record given to `save` is not JSON data of the right shape: a bug of the caller. */
export class InvalidSnapshotError extends SnapshotStoreError {
  override readonly name = 'InvalidSnapshotError';
  constructor(
    readonly flowId: string,
    readonly reason: string,
  ) {
    super(
      'SNAPSHOT_INVALID',
      `cannot save flow ${flowId}: ${reason}. Records hold JSON data only: ` +
        'an ISO string for a Date, {name, message} for an Error, arrays or objects for Maps and Sets.',
    );
  }
}

export class InvalidFlowIdError extends SnapshotStoreError {
  override readonly name = 'InvalidFlowIdError';
  constructor(readonly flowId: string) {
    super(
      'INVALID_FLOW_ID',
      `invalid flow id ${JSON.stringify(flowId)}: use 1-200 letters, digits, "_" and "-" ` +
        '(it becomes a file name and a KV key)',
    );
  }
}

// ---------------------------------------------------------------------------------
// Shared by the implementations.

export function isValidFlowId(flowId: unknown): flowId is string {
  return typeof flowId === 'string' && FLOW_ID.test(flowId);
}

export function assertFlowId(flowId: string): void {
  if (!isValidFlowId(flowId)) throw new InvalidFlowIdError(String(flowId));
}

/** A zod error as one line: `status: Invalid option …; snapshot: is missing`. */
function describeIssues(error: z.ZodError, prefix = ''): string {
  return error.issues
    .map((issue) => `${[prefix, ...issue.path.map(String)].filter(Boolean).join('.') || '(root)'}: ${issue.message}`)
    .join('; ');
}

export { MAX_RECORD_DEPTH };

/** A value met while walking a record, with what is needed to name its place. */
interface Visit {
  value: unknown;
  key: string | number | undefined;
  parent: Visit | undefined;
  /** Arrays and objects around it: 0 for the record itself. */
  depth: number;
}

/** `record.output.list[2]`, its middle cut out when long (a path 1,000 levels deep). */
function placeOf(visit: Visit, root: string): string {
  const parts: string[] = [];
  for (let at: Visit | undefined = visit; at?.parent; at = at.parent) parts.push(typeof at.key === 'number' ? `[${at.key}]` : `.${at.key}`);
  const path = root + parts.reverse().join('');
  return path.length <= 240 ? path : `${path.slice(0, 120)}…${path.slice(-80)}`;
}

/**
 * The first place where `value` is not JSON data (what JSON.stringify would drop,
 * change or refuse, or could not write for its depth), or undefined when it is.
 * `undefined` object properties are fine: JSON leaves them out and they read back as
 * missing. Iterative: a model's answer nested 100,000 deep is reported, not a stack overflow.
 */
export function findNonJson(value: unknown, path = 'record', maxDepth = MAX_RECORD_DEPTH): string | undefined {
  // Every save checks its whole record: most are plain JSON, which a recursive walk that
  // allocates nothing confirms in a fraction of the time. Only a record it cannot vouch
  // for (a problem, a cycle, or deeper than it goes) is walked again to name the place.
  if (isPlainJson(value, 0, Math.min(maxDepth, PLAIN_JSON_DEPTH))) return undefined;
  return placeOfNonJson(value, path, maxDepth);
}

/** How deep isPlainJson recurses before it leaves a record to the walk that names places (no stack overflow). */
const PLAIN_JSON_DEPTH = 200;

/**
 * True when `value` is JSON data no deeper than `limit` levels of arrays and objects, by
 * the rules of placeOfNonJson; false otherwise (a cycle recurses until `limit`).
 */
function isPlainJson(value: unknown, depth: number, limit: number): boolean {
  switch (typeof value) {
    case 'string':
    case 'boolean':
      return true;
    case 'number':
      return Number.isFinite(value);
    case 'object':
      break;
    default:
      return false;
  }
  if (value === null) return true;
  if (depth >= limit) return false;
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) if (!isPlainJson(value[i], depth + 1, limit)) return false;
    return true;
  }
  const proto = Object.getPrototypeOf(value) as object | null;
  if (proto !== Object.prototype && proto !== null) return false;
  const object = value as Record<string, unknown>;
  for (const key of Object.keys(object)) {
    const child = object[key];
    if (child !== undefined && !isPlainJson(child, depth + 1, limit)) return false;
  }
  return true;
}

/** findNonJson's answer, by a walk that keeps the path to each value (iterative: any depth). */
function placeOfNonJson(value: unknown, path: string, maxDepth: number): string | undefined {
  /** The arrays and objects on the way down to the current one: a cycle, not a shared value. */
  const ancestors = new Set<object>();
  const pending: Array<Visit | { leave: object }> = [{ value, key: undefined, parent: undefined, depth: 0 }];
  for (let next = pending.pop(); next; next = pending.pop()) {
    if ('leave' in next) {
      ancestors.delete(next.leave);
      continue;
    }
    const visit = next;
    const v = visit.value;
    switch (typeof v) {
      case 'string':
      case 'boolean':
        continue;
      case 'number':
        if (Number.isFinite(v)) continue;
        return `${placeOf(visit, path)} is ${v} (JSON writes null)`;
      case 'undefined':
        return `${placeOf(visit, path)} is undefined (JSON writes null in an array)`;
      case 'bigint':
      case 'symbol':
      case 'function':
        return `${placeOf(visit, path)} is a ${typeof v}`;
    }
    if (v === null) continue;
    const object = v as object;
    if (ancestors.has(object)) return `${placeOf(visit, path)} refers back to itself`;
    if (visit.depth >= maxDepth) {
      return `${placeOf(visit, path)} nests deeper than ${maxDepth} levels of arrays and objects (the limit: JSON.stringify could not write it)`;
    }
    const children: Array<[string | number, unknown]> = [];
    if (Array.isArray(object)) {
      for (let i = 0; i < object.length; i++) children.push([i, object[i]]);
    } else {
      const proto = Object.getPrototypeOf(object) as object | null;
      if (proto !== Object.prototype && proto !== null) {
        return `${placeOf(visit, path)} is a ${(object as { constructor?: { name?: string } }).constructor?.name ?? 'class instance'}`;
      }
      for (const [key, child] of Object.entries(object)) if (child !== undefined) children.push([key, child]);
    }
    ancestors.add(object);
    pending.push({ leave: object });
    // Reversed onto the stack: the first child is visited first, as in a recursive walk.
    for (let i = children.length - 1; i >= 0; i--) {
      const [key, child] = children[i]!;
      pending.push({ value: child, key, parent: visit, depth: visit.depth + 1 });
    }
  }
  return undefined;
}

/** Checks a record before it is written; returns it as it will be stored. */
export function checkRecordForSave(record: FlowSnapshotRecord): FlowSnapshotRecord {
  const flowId = (record as { flowId?: unknown } | null)?.flowId;
  if (!isValidFlowId(flowId)) throw new InvalidFlowIdError(String(flowId));
  const problem = findNonJson(record);
  if (problem) throw new InvalidSnapshotError(flowId, problem);
  const parsed = FlowSnapshotRecordSchema.safeParse(record);
  if (!parsed.success) throw new InvalidSnapshotError(flowId, `the record has the wrong shape (${describeIssues(parsed.error, 'record')})`);
  return parsed.data;
}

/** The stored record of `flowId`, from parsed JSON; rejects with CorruptSnapshotError. */
export function parseStoredRecord(flowId: string, value: unknown, location: string, prefix = 'record'): FlowSnapshotRecord {
  const parsed = FlowSnapshotRecordSchema.safeParse(value);
  if (!parsed.success) {
    throw new CorruptSnapshotError(flowId, `wrong shape (${describeIssues(parsed.error, prefix)})`, location);
  }
  if (parsed.data.flowId !== flowId) {
    throw new CorruptSnapshotError(flowId, `it holds flow ${parsed.data.flowId}, not ${flowId}`, location);
  }
  return parsed.data;
}

/** JSON.parse, rejecting with CorruptSnapshotError. */
export function parseStoredJson(flowId: string, text: string, location: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch (e) {
    throw new CorruptSnapshotError(flowId, `not JSON (${(e as Error).message})`, location, { cause: e });
  }
}

export function summarize(record: FlowSnapshotRecord): FlowSummary {
  const { flowId, pattern, status, state, updatedAt } = record;
  return { flowId, pattern, status, state, updatedAt };
}

export function statusFilter(filter: ListFilter = {}): (status: FlowStatus) => boolean {
  if (filter.status === undefined) return () => true;
  const wanted = new Set<FlowStatus>(typeof filter.status === 'string' ? [filter.status] : filter.status);
  return (status) => wanted.has(status);
}

export function byUpdatedAt(a: FlowSummary, b: FlowSummary): number {
  return Date.parse(a.updatedAt) - Date.parse(b.updatedAt) || (a.flowId < b.flowId ? -1 : a.flowId > b.flowId ? 1 : 0);
}

/** Whether `prune` deletes this record. */
export function isPrunable(record: Pick<FlowSnapshotRecord, 'status' | 'updatedAt'>, olderThan: Date, statuses: readonly FlowStatus[]): boolean {
  return statuses.includes(record.status) && Date.parse(record.updatedAt) < olderThan.getTime();
}

/** Reports a corrupt entry without letting the callback break a listing. */
export function report(onCorrupt: SnapshotStoreOptions['onCorrupt'], error: CorruptSnapshotError): void {
  try {
    onCorrupt?.(error);
  } catch {
    // the callback's own failure
  }
}

/** `fn` over `items`, at most `limit` at once, results in input order. */
export async function mapLimit<T, R>(items: readonly T[], limit: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const results = new Array<R>(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      results[i] = await fn(items[i]!);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return results;
}
