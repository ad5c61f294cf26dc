import type { FlowSnapshotRecord } from '../persistence/SnapshotStore.js';
import type { FlowRecord } from './protocol.js';

/** The protocol's record of a flow (what `flow.get` answers, and the orchestrator's `get`), from the stored one. */
export function publicRecord(record: FlowSnapshotRecord): FlowRecord {
  const { flowId, pattern, status, state, updatedAt, requestId, output, error, waiting } = record;
  return {
    flowId,
    pattern,
    status,
    state,
    updatedAt,
    ...(requestId ? { requestId } : {}),
    ...(output !== undefined ? { output } : {}),
    ...(error ? { error } : {}),
    ...(waiting?.length ? { waiting } : {}),
  };
}
