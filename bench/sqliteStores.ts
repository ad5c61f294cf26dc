/**
 * A prototype, for the in-situ comparison of bench/sqliteInSitu.ts only: the embedded
 * stores on SQLite (better-sqlite3; WAL, synchronous=FULL) instead of lmdb.
 *
 * One connection (SqliteDatabase) serializes every write of both stores: the writes
 * issued in one event-loop turn wait for a setImmediate, then run in one transaction
 * (group commit, as lmdb-js does off the loop); each resolves once that transaction is
 * committed. A save whose compare-and-set fails is rejected with SnapshotConflictError and
 * writes nothing; the others of its batch are unaffected. better-sqlite3 is synchronous:
 * the commit and its fsync block the event loop, which is what this prototype measures.
 *
 * Simpler than the lmdb stores on purpose: no import of earlier versions' files, no
 * disk-full handling, no summaries index (list reads the flows table's columns).
 */
import Database from 'better-sqlite3';
import { MicrotaskResultSchema, type MicrotaskResult } from '../src/contracts/microtask.js';
import type { ResultsStore } from '../src/actors/ResultsStore.js';
import {
  assertFlowId,
  checkRecordForSave,
  FINISHED_STATUSES,
  InvalidSnapshotError,
  parseStoredJson,
  parseStoredRecord,
  SnapshotConflictError,
  statusFilter,
  byUpdatedAt,
  type FlowSnapshotRecord,
  type FlowStatus,
  type FlowStep,
  type FlowSummary,
  type ListFilter,
  type SaveOptions,
  type SnapshotStore,
  type SnapshotStoreOptions,
  type StoredSnapshot,
} from '../src/persistence/SnapshotStore.js';

/** A write of a batch: true when it applied, false when its condition failed (nothing written). */
type Write = () => boolean;

interface Pending {
  write: Write;
  resolve: (applied: boolean) => void;
  reject: (error: unknown) => void;
}

const SCHEMA = `
  CREATE TABLE IF NOT EXISTS flows (
    flow_id TEXT PRIMARY KEY, revision INTEGER NOT NULL, status TEXT NOT NULL, pattern TEXT NOT NULL,
    state TEXT NOT NULL, updated_at TEXT NOT NULL, json TEXT NOT NULL, snapshot_step INTEGER
  ) WITHOUT ROWID;
  CREATE TABLE IF NOT EXISTS steps (
    flow_id TEXT NOT NULL, step INTEGER NOT NULL, meta TEXT NOT NULL, snapshot_json TEXT NOT NULL,
    PRIMARY KEY (flow_id, step)
  ) WITHOUT ROWID;
  CREATE TABLE IF NOT EXISTS aside (flow_id TEXT NOT NULL, moved_at TEXT NOT NULL, reason TEXT NOT NULL, revision INTEGER, raw TEXT NOT NULL);
  CREATE TABLE IF NOT EXISTS results (key TEXT PRIMARY KEY, json TEXT NOT NULL, at INTEGER NOT NULL) WITHOUT ROWID;
`;

/** The connection both stores share, and its group commit. */
export class SqliteDatabase {
  readonly db: Database.Database;
  private queue: Pending[] = [];
  /** Transactions committed, writes in them, and the time the loop was blocked committing them (ms). */
  readonly stats = { commits: 0, writes: 0, blockedMs: 0 };
  private readonly commit: (batch: Pending[]) => boolean[];

  constructor(readonly path: string) {
    this.db = new Database(path);
    this.db.pragma('journal_mode = WAL');
    this.db.pragma('synchronous = FULL');
    // Another process (`microtask cancel`) writing meanwhile: wait for its lock instead of failing at once.
    this.db.pragma('busy_timeout = 5000');
    this.db.exec(SCHEMA);
    // A write that throws (not a failed condition) aborts the whole transaction: its batch is rejected.
    this.commit = this.db.transaction((batch: Pending[]) => batch.map((p) => p.write()));
  }

  /** Runs `write` in the next group commit; resolves with whether it applied, once committed. */
  enqueue(write: Write): Promise<boolean> {
    return new Promise((resolve, reject) => {
      if (this.queue.length === 0) setImmediate(this.flush);
      this.queue.push({ write, resolve, reject });
    });
  }

  private readonly flush = () => {
    const batch = this.queue;
    this.queue = [];
    let applied: boolean[];
    const began = performance.now();
    try {
      applied = this.commit(batch);
    } catch (e) {
      for (const p of batch) p.reject(e);
      return;
    } finally {
      this.stats.blockedMs += performance.now() - began;
    }
    this.stats.commits++;
    this.stats.writes += batch.length;
    batch.forEach((p, i) => p.resolve(applied[i]!));
  };

  close(): void {
    if (this.queue.length) this.flush();
    this.db.close();
  }
}

type FlowRow = { revision: number; json: string; snapshot_step: number | null };

export class SqliteSnapshotStore implements SnapshotStore {
  readonly keepsSteps = true;
  private readonly sql;

  constructor(
    private readonly database: SqliteDatabase,
    // Kept for the contract's shape: list reads columns, so it meets no corrupt record to report.
    readonly options: SnapshotStoreOptions = {},
  ) {
    const db = database.db;
    this.sql = {
      insert: db.prepare(
        'INSERT INTO flows (flow_id, revision, status, pattern, state, updated_at, json, snapshot_step) VALUES (?, 1, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING',
      ),
      update: db.prepare(
        'UPDATE flows SET revision = revision + 1, status = ?, pattern = ?, state = ?, updated_at = ?, json = ?, snapshot_step = ? WHERE flow_id = ? AND revision = ?',
      ),
      step: db.prepare('INSERT OR REPLACE INTO steps (flow_id, step, meta, snapshot_json) VALUES (?, ?, ?, ?)'),
      get: db.prepare<[string], FlowRow>('SELECT revision, json, snapshot_step FROM flows WHERE flow_id = ?'),
      revision: db.prepare<[string], { revision: number }>('SELECT revision FROM flows WHERE flow_id = ?'),
      stepSnapshot: db.prepare<[string, number], { snapshot_json: string }>('SELECT snapshot_json FROM steps WHERE flow_id = ? AND step = ?'),
      steps: db.prepare<[string], { meta: string; snapshot_json: string }>('SELECT meta, snapshot_json FROM steps WHERE flow_id = ? ORDER BY step'),
      summaries: db.prepare<[], { flow_id: string; revision: number; status: string; pattern: string; state: string; updated_at: string }>(
        'SELECT flow_id, revision, status, pattern, state, updated_at FROM flows',
      ),
      removeAt: db.prepare('DELETE FROM flows WHERE flow_id = ? AND revision = ?'),
      removeSteps: db.prepare('DELETE FROM steps WHERE flow_id = ?'),
      aside: db.prepare('INSERT INTO aside (flow_id, moved_at, reason, revision, raw) VALUES (?, ?, ?, ?, ?)'),
    };
  }

  async save(record: FlowSnapshotRecord, expectedRevision: number | null, options: SaveOptions = {}): Promise<number> {
    const checked = checkRecordForSave(record);
    const flowId = checked.flowId;
    const steps = options.steps ?? [];
    for (const step of steps) {
      if (!Number.isSafeInteger(step.step) || step.step < 1) throw new InvalidSnapshotError(flowId, `step number ${step.step} is not a positive integer`);
    }
    // As LmdbSnapshotStore: the record's snapshot is its last step's, kept once (in the step).
    const last = steps.at(-1);
    const byStep = last !== undefined && typeof last.snapshotJson === 'string' && last.step === checked.steps;
    const json = JSON.stringify(byStep ? { ...checked, snapshot: undefined } : checked);
    const snapshotStep = byStep ? last.step : null;
    const state = JSON.stringify(checked.state);
    const rows = steps.map(({ snapshotJson, ...meta }) => [meta.step, JSON.stringify(meta), snapshotJson] as const);
    const { sql } = this;
    const applied = await this.database.enqueue(() => {
      const changes =
        expectedRevision === null
          ? sql.insert.run(flowId, checked.status, checked.pattern, state, checked.updatedAt, json, snapshotStep).changes
          : sql.update.run(checked.status, checked.pattern, state, checked.updatedAt, json, snapshotStep, flowId, expectedRevision).changes;
      if (changes !== 1) return false;
      for (const [step, meta, snapshotJson] of rows) sql.step.run(flowId, step, meta, snapshotJson);
      return true;
    });
    if (!applied) throw new SnapshotConflictError(flowId, expectedRevision, sql.revision.get(flowId)?.revision ?? null);
    return (expectedRevision ?? 0) + 1;
  }

  async load(flowId: string): Promise<StoredSnapshot | undefined> {
    assertFlowId(flowId);
    const row = this.sql.get.get(flowId);
    return row ? { record: this.parse(flowId, row), revision: row.revision } : undefined;
  }

  async readSteps(flowId: string): Promise<FlowStep[]> {
    assertFlowId(flowId);
    return this.sql.steps.all(flowId).map((row) => ({ ...(JSON.parse(row.meta) as Omit<FlowStep, 'snapshotJson'>), snapshotJson: row.snapshot_json }));
  }

  async list(filter?: ListFilter): Promise<FlowSummary[]> {
    const wanted = statusFilter(filter);
    return this.sql.summaries
      .all()
      .filter((r) => wanted(r.status as FlowStatus))
      .map((r) => ({ flowId: r.flow_id, pattern: r.pattern, status: r.status as FlowStatus, state: JSON.parse(r.state) as unknown, updatedAt: r.updated_at }))
      .sort(byUpdatedAt);
  }

  async delete(flowId: string): Promise<void> {
    assertFlowId(flowId);
    await this.database.enqueue(() => {
      const row = this.sql.revision.get(flowId);
      if (row) this.removeAt(flowId, row.revision);
      return true;
    });
  }

  async moveAside(flowId: string, reason: string): Promise<void> {
    assertFlowId(flowId);
    await this.database.enqueue(() => {
      const row = this.sql.get.get(flowId);
      if (!row) return true;
      this.sql.aside.run(flowId, new Date().toISOString(), reason, row.revision, this.rawWithSnapshot(flowId, row));
      this.removeAt(flowId, row.revision);
      return true;
    });
  }

  async prune(olderThan: Date, statuses: readonly FlowStatus[] = FINISHED_STATUSES): Promise<number> {
    const prunable = this.sql.summaries.all().filter((r) => statuses.includes(r.status as FlowStatus) && Date.parse(r.updated_at) < olderThan.getTime());
    // At the revision read: a flow saved meanwhile is not pruned.
    const removed = await Promise.all(prunable.map((r) => this.database.enqueue(() => this.removeAt(r.flow_id, r.revision))));
    return removed.filter(Boolean).length;
  }

  /** Inside a write: removes the flow and its steps if it is still at `revision`. */
  private removeAt(flowId: string, revision: number): boolean {
    if (this.sql.removeAt.run(flowId, revision).changes !== 1) return false;
    this.sql.removeSteps.run(flowId);
    return true;
  }

  private rawWithSnapshot(flowId: string, row: FlowRow): string {
    if (row.snapshot_step === null) return row.json;
    const step = this.sql.stepSnapshot.get(flowId, row.snapshot_step);
    return step ? `${row.json.slice(0, -1)},"snapshot":${step.snapshot_json}}` : row.json;
  }

  private parse(flowId: string, row: FlowRow): FlowSnapshotRecord {
    const location = `${this.database.path}, flow ${flowId}`;
    const json = parseStoredJson(flowId, row.json, location) as Record<string, unknown>;
    if (row.snapshot_step !== null && json && typeof json === 'object') {
      const step = this.sql.stepSnapshot.get(flowId, row.snapshot_step);
      json.snapshot = step ? parseStoredJson(flowId, step.snapshot_json, `${location}, step ${row.snapshot_step}`) : undefined;
    }
    return parseStoredRecord(flowId, json, location);
  }
}

/** Microtask results in the same database: one row per idempotency key, put in the turn's group commit. */
export class SqliteResultsStore implements ResultsStore {
  private readonly sql;

  constructor(private readonly database: SqliteDatabase) {
    this.sql = {
      get: database.db.prepare<[string], { json: string }>('SELECT json FROM results WHERE key = ?'),
      put: database.db.prepare('INSERT OR REPLACE INTO results (key, json, at) VALUES (?, ?, ?)'),
    };
  }

  get location(): string {
    return this.database.path;
  }

  async get(key: string): Promise<MicrotaskResult | undefined> {
    const row = this.sql.get.get(key);
    if (!row) return undefined;
    // As LmdbResultsStore: a stored value that fails the schema or is another key's is as good as none.
    const parsed = MicrotaskResultSchema.safeParse(JSON.parse(row.json));
    return parsed.success && parsed.data.key === key ? parsed.data : undefined;
  }

  async put(key: string, result: MicrotaskResult): Promise<void> {
    const json = JSON.stringify(result);
    const at = Date.now();
    await this.database.enqueue(() => (this.sql.put.run(key, json, at), true));
  }
}
