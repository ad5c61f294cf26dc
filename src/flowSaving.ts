import type { Logger } from './log.js';
import { CorruptSnapshotError, InvalidSnapshotError, SnapshotConflictError, type FlowSnapshotRecord, type FlowStep, type SnapshotStore } from './persistence/SnapshotStore.js';
import { describeStoreError, StoreUnavailableError } from './persistence/StoreUnavailableError.js';

/** Failures a person must fix (space, permissions): the flow stops at once rather than retrying. */
const PERMANENT_FS_CODES = new Set(['ENOSPC', 'EDQUOT', 'EROFS', 'EACCES', 'EPERM']);

/** How long a passing store failure is tried again before a flow stops (resumable). */
export const DEFAULT_STORE_RETRY_MS = 20_000;

/**
 * One save of a flow's record (with its steps), tried again while the store's failure may
 * pass (a timeout, a reconnect); an attempt that timed out may have landed, so a conflict
 * after one is checked against what is stored. A store that stays down, or a full disk,
 * rejects with StoreUnavailableError (the host stops the flow, resumable); a conflict
 * (another owner's write) with SnapshotConflictError. Resolves with the new revision.
 */
export async function saveStep(
  store: SnapshotStore,
  record: FlowSnapshotRecord,
  expected: number | null,
  steps: FlowStep[],
  options: { retryMs?: number | undefined; location?: string | undefined; logger: Logger; givenUp: () => boolean },
): Promise<number> {
  const giveUpAt = Date.now() + (options.retryMs ?? DEFAULT_STORE_RETRY_MS);
  for (let attempt = 0; ; attempt++) {
    try {
      return await store.save(record, expected, { steps });
    } catch (e) {
      if (e instanceof SnapshotConflictError) {
        if (attempt > 0) {
          const landed = await store.load(record.flowId).catch(() => undefined);
          if (landed && sameSave(landed.record, record)) return landed.revision;
        }
        throw e;
      }
      if (e instanceof InvalidSnapshotError || e instanceof CorruptSnapshotError) throw e;
      if (PERMANENT_FS_CODES.has((e as { code?: string }).code ?? '') || Date.now() >= giveUpAt || options.givenUp()) {
        throw new StoreUnavailableError(describeStoreError(e, options.location ?? 'the snapshot store'), { cause: e });
      }
      options.logger.warn({ flowId: record.flowId, attempt, err: e }, 'could not save a step; trying again');
      await new Promise((resolve) => setTimeout(resolve, Math.min(2_000, 50 * 2 ** attempt) * (0.5 + Math.random() / 2)));
    }
  }
}

/**
 * A flow's stored record read to wake it (src/flowHost.ts restore), tried again while the
 * store's failure may pass, as a save is: a sleeping flow's answer must not be lost to
 * a timeout an awake flow (which reads nothing to take it) would never have met.
 */
export async function loadForWake(
  store: SnapshotStore,
  flowId: string,
  options: { retryMs?: number | undefined; logger: Logger; givenUp: () => boolean },
): ReturnType<SnapshotStore['load']> {
  const giveUpAt = Date.now() + (options.retryMs ?? DEFAULT_STORE_RETRY_MS);
  for (let attempt = 0; ; attempt++) {
    try {
      return await store.load(flowId);
    } catch (e) {
      if (e instanceof CorruptSnapshotError || PERMANENT_FS_CODES.has((e as { code?: string }).code ?? '') || Date.now() >= giveUpAt || options.givenUp()) throw e;
      options.logger.warn({ flowId, attempt, err: e }, 'could not read a sleeping flow to wake it; trying again');
      await new Promise((resolve) => setTimeout(resolve, Math.min(2_000, 50 * 2 ** attempt) * (0.5 + Math.random() / 2)));
    }
  }
}

/** A record without the per-flow lease older daemons wrote (the lease is the owner's heartbeat now). */
export function withoutLeaseUntil(record: FlowSnapshotRecord): FlowSnapshotRecord {
  const { leaseUntil: _older, ...rest } = record;
  return rest;
}

/** Whether the stored record is the one this host tried to save (an attempt that timed out but landed). */
function sameSave(stored: FlowSnapshotRecord, attempted: FlowSnapshotRecord): boolean {
  return stored.updatedAt === attempted.updatedAt && stored.steps === attempted.steps && stored.owner === attempted.owner && stored.status === attempted.status;
}
