import { readdir, readFile, rename } from 'node:fs/promises';
import { join } from 'node:path';
import { mkdirs } from '../mkdirs.js';
import { durable, legacyDirs, quiet, type LmdbDatabases, type LmdbStore, type StoredSummary } from './LmdbStore.js';
import {
  assertFlowId,
  checkRecordForSave,
  CorruptSnapshotError,
  FINISHED_STATUSES,
  InvalidSnapshotError,
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
  type FlowStep,
  type FlowSummary,
  type ListFilter,
  type SaveOptions,
  type SnapshotStore,
  type SnapshotStoreOptions,
  type StoredSnapshot,
} from './SnapshotStore.js';

/**
 * Snapshots in the embedded database (LmdbStore): each flow's record as JSON text under its
 * id, its summary beside it, and each saved step under [flowId, step], all written in one
 * transaction. Many saves issued at once (of many flows, and steps) share one commit and
 * one fsync (lmdb-js group commit); a save resolves once its commit is on disk.
 *
 * Revisions are LMDB entry versions, and a save's is always `expectedRevision + 1` (1 for a
 * new flow): `nextRevision`. The check is LMDB's conditional write (`ifVersion`, or
 * `ifNoExists` for null), evaluated inside the write transaction in the order the saves
 * were issued, so:
 * - of two saves expecting the same revision exactly one wins, in one process or several
 *   (a `microtask cancel` of another process that marks the flow cancelled makes the
 *   daemon's next save fail with SnapshotConflictError);
 * - saves of one flow may be pipelined: a save expecting `nextRevision(r)` may be issued
 *   before the save expecting `r` resolved; it sees what that one left. A save that loses
 *   writes nothing, not its steps either.
 * After a delete (or moveAside) a flow created again starts at revision 1 again.
 *
 * Flows of earlier versions (`<stateDir>/flows/<flowId>.json`, FileSnapshotStore) are
 * imported by `open`: each in one transaction with a marker, and the file is then moved to
 * `flows/imported/`. A process killed midway loses nothing: a file whose marker exists is
 * only moved, and a flow already in the database is never imported again.
 */
export class LmdbSnapshotStore implements SnapshotStore {
  readonly keepsSteps = true;

  constructor(
    private readonly db: LmdbStore,
    private readonly options: SnapshotStoreOptions = {},
  ) {
  }

  /** Read for each operation: a handle closed fails at once (a write to a closed environment would never settle). */
  private get dbs(): LmdbDatabases {
    return this.db.dbs;
  }

  /** The store over `db`, with the flows of earlier versions in its state directory imported first. */
  static async open(db: LmdbStore, options: SnapshotStoreOptions = {}): Promise<LmdbSnapshotStore> {
    const store = new LmdbSnapshotStore(db, options);
    await store.importLegacyFlows();
    return store;
  }

  /** The revision a save expecting `expectedRevision` makes (what it resolves with). */
  static nextRevision(expectedRevision: number | null): number {
    return (expectedRevision ?? 0) + 1;
  }

  async save(record: FlowSnapshotRecord, expectedRevision: number | null, options: SaveOptions = {}): Promise<number> {
    const checked = checkRecordForSave(record);
    const flowId = checked.flowId;
    const steps = options.steps ?? [];
    for (const step of steps) {
      if (!Number.isSafeInteger(step.step) || step.step < 1) throw new InvalidSnapshotError(flowId, `step number ${step.step} is not a positive integer`);
    }
    const revision = LmdbSnapshotStore.nextRevision(expectedRevision);
    // The record's snapshot is its last step's (the host saves them so): kept once, in the
    // step, and named by the record. Serializing and writing each snapshot once instead of
    // twice is most of a save's cost.
    const last = steps.at(-1);
    const byStep = last !== undefined && typeof last.snapshotJson === 'string' && last.step === checked.steps;
    const json = byStep ? JSON.stringify({ ...checked, snapshot: undefined, snapshotStep: last.step }) : JSON.stringify(checked);
    const { flows, summaries, steps: stepsDb } = this.dbs;
    const write = () => {
      quiet(flows.put(flowId, json, revision));
      quiet(summaries.put(flowId, { ...summarize(checked), revision }));
      for (const step of steps) quiet(stepsDb.put([flowId, step.step], step));
    };
    await this.db.ensureSpace();
    const saved = await durable(expectedRevision === null ? flows.ifNoExists(flowId, write) : flows.ifVersion(flowId, expectedRevision, write));
    if (!saved) throw new SnapshotConflictError(flowId, expectedRevision, flows.getEntry(flowId)?.version ?? null);
    return revision;
  }

  async load(flowId: string): Promise<StoredSnapshot | undefined> {
    assertFlowId(flowId);
    const entry = this.dbs.flows.getEntry(flowId);
    return entry ? { record: this.parse(flowId, entry.value), revision: entry.version ?? 0 } : undefined;
  }

  async readSteps(flowId: string): Promise<FlowStep[]> {
    assertFlowId(flowId);
    return Array.from(this.dbs.steps.getRange(stepRange(flowId)), ({ value }) => value);
  }

  async list(filter?: ListFilter): Promise<FlowSummary[]> {
    const wanted = statusFilter(filter);
    return this.scan()
      .filter((s) => wanted(s.status))
      .map(({ flowId, pattern, status, state, updatedAt }) => ({ flowId, pattern, status, state, updatedAt }));
  }

  /**
   * Every flow's record of these statuses in one read transaction; the record of a flow that
   * sleeps without its snapshot (its step is not read: 100,000 waiting flows resumed touch
   * their records only, not megabytes of snapshots each mapped into memory).
   */
  async loadAll(filter?: ListFilter): Promise<StoredSnapshot[]> {
    const wanted = statusFilter(filter);
    const { flows } = this.dbs;
    const transaction = flows.useReadTransaction();
    const found: StoredSnapshot[] = [];
    try {
      for (const { key, value, version } of flows.getRange({ transaction, versions: true }) as Iterable<{ key: string; value: string; version?: number }>) {
        if (!isValidFlowId(key)) continue;
        try {
          const asleep = this.parse(key, value, { omitSleepingSnapshot: true });
          if (wanted(asleep.record.status)) found.push({ ...asleep, revision: version ?? 0 });
        } catch (e) {
          if (!(e instanceof CorruptSnapshotError)) throw e;
          report(this.options.onCorrupt, e);
        }
      }
    } finally {
      transaction.done();
    }
    return found;
  }

  async delete(flowId: string): Promise<void> {
    assertFlowId(flowId);
    for (;;) {
      const entry = this.dbs.flows.getEntry(flowId);
      if (!entry) return;
      if (await this.removeAt(flowId, entry.version ?? 0)) return;
      // Saved meanwhile: remove what is there now.
    }
  }

  async moveAside(flowId: string, reason: string): Promise<void> {
    assertFlowId(flowId);
    for (;;) {
      const entry = this.dbs.flows.getEntry(flowId);
      if (!entry) return;
      const movedAt = new Date().toISOString();
      // With the snapshot its step holds: the steps go with the record.
      const aside = { flowId, reason, movedAt, revision: entry.version, raw: this.rawWithSnapshot(flowId, entry.value) };
      if (await this.removeAt(flowId, entry.version ?? 0, () => quiet(this.dbs.aside.put([flowId, movedAt], aside)))) return;
    }
  }

  /** The entries moved aside for `flowId`, oldest first (for a person to look at). */
  movedAside(flowId: string) {
    assertFlowId(flowId);
    return Array.from(this.dbs.aside.getRange({ start: [flowId], end: [flowId, '\uffff'] }), ({ value }) => value);
  }

  async prune(olderThan: Date, statuses: readonly FlowStatus[] = FINISHED_STATUSES): Promise<number> {
    const removals = this.scan()
      .filter((s) => isPrunable(s, olderThan, statuses))
      // At the revision read: a flow saved meanwhile (taken over, resumed) is not pruned.
      .map((s) => this.removeAt(s.flowId, s.revision));
    return (await Promise.all(removals)).filter(Boolean).length;
  }

  // -- internals ----------------------------------------------------------------

  /** A stored record's text with its snapshot in it, for a person (a corrupt one as it is). */
  private rawWithSnapshot(flowId: string, text: string): string {
    try {
      const json = JSON.parse(text) as { snapshotStep?: unknown };
      if (typeof json.snapshotStep !== 'number') return text;
      const step = this.dbs.steps.get([flowId, json.snapshotStep]);
      const { snapshotStep: _, ...record } = json;
      return step ? `${JSON.stringify(record).slice(0, -1)},"snapshot":${step.snapshotJson}}` : text;
    } catch {
      return text;
    }
  }

  private parse(flowId: string, text: string): FlowSnapshotRecord;
  private parse(flowId: string, text: string, options: { omitSleepingSnapshot: true }): { record: FlowSnapshotRecord; snapshotOmitted?: boolean };
  private parse(flowId: string, text: string, options?: { omitSleepingSnapshot: true }): FlowSnapshotRecord | { record: FlowSnapshotRecord; snapshotOmitted?: boolean } {
    const location = `${this.db.path}, flow ${flowId}`;
    const json = parseStoredJson(flowId, text, location) as { snapshotStep?: unknown; snapshot?: unknown; sleep?: unknown; status?: unknown };
    let record: unknown = json;
    let snapshotOmitted = false;
    if (json && typeof json === 'object' && typeof json.snapshotStep === 'number') {
      // Saved by reference to the step holding its snapshot (see save).
      const { snapshotStep, ...rest } = json;
      if (options?.omitSleepingSnapshot && rest.sleep !== undefined && rest.status === 'running') {
        rest.snapshot = null;
        snapshotOmitted = true;
      } else {
        const step = this.dbs.steps.get([flowId, snapshotStep as number]);
        rest.snapshot = step ? parseStoredJson(flowId, step.snapshotJson, `${location}, step ${snapshotStep}`) : undefined;
      }
      record = rest;
    }
    const parsed = parseStoredRecord(flowId, record, location);
    if (!options) return parsed;
    return snapshotOmitted ? { record: parsed, snapshotOmitted } : { record: parsed };
  }

  /**
   * Every flow's summary and revision, oldest `updatedAt` first, from one read snapshot.
   * A summary stands for its record when both carry the same revision (they are written
   * together): the record is not read. Any other record is read and checked; a corrupt one
   * is reported and left out.
   */
  private scan(): StoredSummary[] {
    const { flows, summaries } = this.dbs;
    const transaction = flows.useReadTransaction();
    const found: StoredSummary[] = [];
    try {
      const known = new Map<string, StoredSummary>();
      for (const { key, value } of summaries.getRange({ transaction })) known.set(key, value);
      for (const flowId of flows.getKeys({ transaction }) as Iterable<string>) {
        if (!isValidFlowId(flowId)) continue;
        const summary = known.get(flowId);
        if (summary && flows.doesExist(flowId, summary.revision as never, { transaction })) {
          found.push(summary);
          continue;
        }
        const entry = flows.getEntry(flowId, { transaction });
        if (!entry) continue;
        try {
          found.push({ ...summarize(this.parse(flowId, entry.value)), revision: entry.version ?? 0 });
        } catch (e) {
          if (!(e instanceof CorruptSnapshotError)) throw e;
          report(this.options.onCorrupt, e);
        }
      }
    } finally {
      transaction.done();
    }
    const at = new Map(found.map((s) => [s, Date.parse(s.updatedAt)]));
    return found.sort((a, b) => at.get(a)! - at.get(b)! || (a.flowId < b.flowId ? -1 : a.flowId > b.flowId ? 1 : 0));
  }

  /** Removes the flow's record, summary and steps if its revision is still `revision` (and does `also` with them). */
  private removeAt(flowId: string, revision: number, also?: () => void): Promise<boolean> {
    const { flows, summaries, steps } = this.dbs;
    // Steps are only written by saves, which change the revision: the keys read now are all there are at `revision`.
    const stepKeys = Array.from(steps.getKeys(stepRange(flowId)));
    return durable(
      flows.ifVersion(flowId, revision, () => {
        also?.();
        quiet(flows.remove(flowId));
        quiet(summaries.remove(flowId));
        for (const key of stepKeys) quiet(steps.remove(key));
      }),
    );
  }

  /**
   * Imports `<stateDir>/flows/*.json` of earlier versions: the record at its revision (a
   * file that cannot be read as a record is imported as it is, to be reported as corrupt),
   * with a marker in the same transaction; then the file goes to `flows/imported/`.
   */
  private async importLegacyFlows(): Promise<void> {
    const dir = legacyDirs(this.db.stateDir).flows;
    let names: string[];
    try {
      names = (await readdir(dir, { withFileTypes: true })).filter((e) => e.isFile()).map((e) => e.name);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT' || (e as NodeJS.ErrnoException).code === 'ENOTDIR') return;
      throw e;
    }
    const flowIds = names.filter((n) => n.endsWith('.json')).map((n) => n.slice(0, -'.json'.length)).filter(isValidFlowId);
    if (!flowIds.length) return;
    const importedDir = join(dir, IMPORTED_DIR);
    await mkdirs(importedDir);
    const { flows, summaries, imported } = this.dbs;
    await mapLimit(flowIds, IMPORT_CONCURRENCY, async (flowId) => {
      const file = join(dir, `${flowId}.json`);
      if (!imported.get(flowId)) {
        let text: string;
        try {
          text = await readFile(file, 'utf8');
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code === 'ENOENT') return; // another process imported it meanwhile
          throw e;
        }
        const { value, revision, summary } = legacyEntry(flowId, text, file);
        // Not over a flow already in the database (another process imported it first).
        await durable(
          flows.ifNoExists(flowId, () => {
            quiet(flows.put(flowId, value, revision));
            if (summary) quiet(summaries.put(flowId, { ...summary, revision }));
            quiet(imported.put(flowId, { importedAt: new Date().toISOString(), file }));
          }),
        );
      }
      await rename(file, join(importedDir, `${flowId}.json`)).catch((e: NodeJS.ErrnoException) => {
        if (e.code !== 'ENOENT') throw e;
      });
    });
  }
}

const IMPORTED_DIR = 'imported';
const IMPORT_CONCURRENCY = 16;

/** All the step keys of a flow: [flowId, n] sort by flowId, then by n. */
function stepRange(flowId: string) {
  return { start: [flowId, 0] as [string, number], end: [flowId, Number.MAX_SAFE_INTEGER] as [string, number] };
}

/** What a file of FileSnapshotStore (`{"revision": n, "record": {...}}`) becomes in the database. */
function legacyEntry(flowId: string, text: string, file: string): { value: string; revision: number; summary?: FlowSummary } {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    return { value: text, revision: 1 };
  }
  const revision = (json as { revision?: unknown } | null)?.revision;
  const readable = Number.isSafeInteger(revision) && (revision as number) >= 1 ? (revision as number) : 1;
  try {
    const record = parseStoredRecord(flowId, (json as { record?: unknown }).record, file);
    return { value: JSON.stringify(record), revision: readable, summary: summarize(record) };
  } catch {
    // Kept as it was: load reports it as corrupt, moveAside keeps it for a person.
    return { value: text, revision: readable };
  }
}
