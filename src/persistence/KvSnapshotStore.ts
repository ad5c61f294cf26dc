import { BusError, type KeyValueStore } from '../bus/Bus.js';
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
  recordJson,
  type FlowSnapshotRecord,
  type SaveOptions,
  type FlowStatus,
  type FlowSummary,
  type ListFilter,
  type SnapshotStore,
  type SnapshotStoreOptions,
  type StoredSnapshot,
} from './SnapshotStore.js';

const SNAPSHOT_PREFIX = 'snapshot.';
const CORRUPT_PREFIX = 'corrupt.';
/** Entries read at once by list and prune. */
const READ_CONCURRENCY = 32;

/**
 * Snapshots in a KV bucket of the bus (NATS JetStream KV, or the in-memory bus): the
 * record as JSON under `snapshot.<flowId>`, the revision is the KV's. A save is a
 * compare-and-set on the server (`create` for a new flow, `update` at the expected
 * revision), so two daemons sharing the bucket never both own a flow: the one whose
 * save is refused gets SnapshotConflictError and must stop driving the flow.
 *
 * Entries moved aside go to `corrupt.<flowId>` as `{flowId, reason, movedAt, revision,
 * raw}` (a later one for the same flow replaces it).
 */
export class KvSnapshotStore implements SnapshotStore {
  constructor(
    private readonly kv: KeyValueStore,
    private readonly options: SnapshotStoreOptions = {},
  ) {}

  /** Where a flow's snapshot lives in the bucket. */
  static key(flowId: string): string {
    assertFlowId(flowId);
    return `${SNAPSHOT_PREFIX}${flowId}`;
  }

  /** Where a flow's entry goes when moved aside. */
  static corruptKey(flowId: string): string {
    assertFlowId(flowId);
    return `${CORRUPT_PREFIX}${flowId}`;
  }

  async save(record: FlowSnapshotRecord, expectedRevision: number | null, options: SaveOptions = {}): Promise<number> {
    const checked = checkRecordForSave(record);
    const key = KvSnapshotStore.key(checked.flowId);
    const value = recordJson(checked, options.steps);
    try {
      return expectedRevision === null ? await this.kv.create(key, value) : await this.kv.update(key, value, expectedRevision);
    } catch (e) {
      if (e instanceof BusError && (e.code === 'KV_EXISTS' || e.code === 'KV_WRONG_REVISION')) {
        // Read only to say what the store holds: the conflict stands whatever this finds.
        const actual = await this.kv.get(key).then(
          (entry) => entry?.revision ?? null,
          () => undefined,
        );
        throw new SnapshotConflictError(checked.flowId, expectedRevision, actual, { cause: e });
      }
      throw e;
    }
  }

  async load(flowId: string): Promise<StoredSnapshot | undefined> {
    const key = KvSnapshotStore.key(flowId);
    const entry = await this.kv.get(key);
    if (!entry) return undefined;
    const location = `KV key ${key}`;
    const json = parseStoredJson(flowId, entry.string(), location);
    return { record: parseStoredRecord(flowId, json, location, ''), revision: entry.revision };
  }

  async list(filter?: ListFilter): Promise<FlowSummary[]> {
    return (await this.loadAll(filter)).map(({ record }) => summarize(record)).sort(byUpdatedAt);
  }

  /**
   * Every flow's record and revision in one pass over the bucket (its last values, not a
   * request per flow: 100,000 flows resumed read in seconds); corrupt entries reported
   * and skipped.
   */
  async loadAll(filter?: ListFilter): Promise<StoredSnapshot[]> {
    const wanted = statusFilter(filter);
    const found: StoredSnapshot[] = [];
    for (const entry of await this.kv.entries(`${SNAPSHOT_PREFIX}>`)) {
      const flowId = entry.key.slice(SNAPSHOT_PREFIX.length);
      if (!isValidFlowId(flowId)) continue;
      try {
        const location = `KV key ${entry.key}`;
        const record = parseStoredRecord(flowId, parseStoredJson(flowId, entry.string(), location), location, '');
        if (wanted(record.status)) found.push({ record, revision: entry.revision });
      } catch (e) {
        if (!(e instanceof CorruptSnapshotError)) throw e;
        report(this.options.onCorrupt, e);
      }
    }
    return found;
  }

  async delete(flowId: string): Promise<void> {
    await this.kv.delete(KvSnapshotStore.key(flowId));
  }

  async moveAside(flowId: string, reason: string): Promise<void> {
    const key = KvSnapshotStore.key(flowId);
    const entry = await this.kv.get(key);
    if (!entry) return;
    const aside = { flowId, reason, movedAt: new Date().toISOString(), revision: entry.revision, raw: entry.string() };
    await this.kv.put(KvSnapshotStore.corruptKey(flowId), JSON.stringify(aside));
    await this.kv.delete(key);
  }

  async prune(olderThan: Date, statuses: readonly FlowStatus[] = FINISHED_STATUSES): Promise<number> {
    // Read in one pass (a get per flow cost a daemon's start 100,000 requests), deleted one by one.
    const prunable = (await this.loadAll({ status: [...statuses] })).filter(({ record }) => isPrunable(record, olderThan, statuses));
    await mapLimit(prunable, READ_CONCURRENCY, ({ record }) => this.kv.delete(KvSnapshotStore.key(record.flowId)));
    return prunable.length;
  }
}
