import type { KeptEvent } from './contracts/waits.js';
import type { Flows } from './flows.js';
import { matchWait, storedWaits, type LiveWait } from './flowWaits.js';
import type { Inbox } from './inbox/Inbox.js';
import type { SnapshotStore } from './persistence/SnapshotStore.js';
import { isValidFlowId, type FlowSnapshotRecord } from './persistence/SnapshotStore.js';

/** Why an event could not be kept for a flow: it has none, or it ended. */
export class SendError extends Error {
  override readonly name = 'SendError';
  constructor(
    readonly code: 'FLOW_NOT_FOUND' | 'FLOW_FINISHED',
    message: string,
  ) {
    super(message);
  }
}

/**
 * Sends an event to a flow, wherever it runs or if nothing runs it: checks it against
 * what the flow waits for now (the running flow's actors when this process runs it, its
 * stored snapshot otherwise), then keeps it in the flow's inbox, from which the process
 * that runs the flow applies it, or its resume does. Throws EventRefusedError (what the
 * flow waits for, or what is wrong with the data) or SendError; `duplicate` when the
 * flow applied this event id already. The daemon's flow.send and `microtask send` both.
 */
export async function sendEvent(
  parts: { store: SnapshotStore; inbox: Inbox; flows: Flows; running?: (flowId: string) => { record: FlowSnapshotRecord; waits: LiveWait[] } | undefined },
  flowId: string,
  event: KeptEvent,
): Promise<{ duplicate: boolean }> {
  if (!isValidFlowId(flowId)) throw new SendError('FLOW_NOT_FOUND', `no flow ${JSON.stringify(flowId).slice(0, 220)}: \`microtask flows\` lists them`);
  const here = parts.running?.(flowId);
  const record = here?.record ?? (await parts.store.load(flowId))?.record;
  if (!record) throw new SendError('FLOW_NOT_FOUND', `no flow ${flowId}: \`microtask flows\` lists them`);
  // A retry of an event the flow applied (and perhaps ended with) is answered as such.
  if (record.received?.includes(event.eventId)) return { duplicate: true };
  if (record.status !== 'running') throw new SendError('FLOW_FINISHED', `flow ${flowId} already ended: ${record.status}`);
  const waits = here?.waits ?? (parts.flows.catalog.has(record.pattern) ? storedWaits(parts.flows.catalog.machine(record.pattern)!, record.snapshot) : []);
  const sentAt = Date.now();
  const { wait } = matchWait(flowId, waits, event, sentAt);
  // Bound to the wait it was checked against: not applied to a later one nobody has seen.
  await parts.inbox.append(flowId, { ...event, sentAt, ...(wait.since ? { forWait: wait.since } : {}) });
  return { duplicate: false };
}
