import { SnapshotStoreError, type SnapshotStore } from '../persistence/SnapshotStore.js';
import { UsageError } from './exitCodes.js';

/** A flow's record; an invalid id or a corrupt record is the user's to fix (exit 2). */
export function loadForUser(store: SnapshotStore, flowId: string) {
  return store.load(flowId).catch((e: unknown) => {
    if (e instanceof SnapshotStoreError) throw new UsageError(e.message, e.code);
    throw e;
  });
}
