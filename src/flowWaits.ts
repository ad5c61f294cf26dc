import { z } from 'zod';
import { createActor, type AnyActorRef, type AnyStateMachine, type Snapshot } from 'xstate';
import type { WaitDeclaration } from './machines/waits.js';
import type { FlowWait, SentEvent } from './contracts/waits.js';

export { FlowWaitSchema, SentEventSchema, type FlowWait, type SentEvent } from './contracts/waits.js';

/**
 * What a flow waits for, read from its running actors: every actor of the flow (the root
 * or a child, e.g. a tool builder's module loop) whose current state declares a wait in
 * its `meta.wait` (src/machines/waits.ts). Events sent to the flow are checked here and
 * go to the actor that waits for them.
 */

export interface LiveWait extends FlowWait {
  ref: AnyActorRef;
  schemas: Record<string, z.ZodType>;
}

type MachineSnapshotLike = {
  status?: string;
  value?: unknown;
  children?: Record<string, AnyActorRef | undefined>;
  getMeta?: () => Record<string, unknown>;
};

/** The waits of a running flow, the root's first, then its children's, depth first. */
export function waitsOf(root: AnyActorRef): LiveWait[] {
  const found: LiveWait[] = [];
  const visit = (ref: AnyActorRef, path: string[]) => {
    const snapshot = ref.getSnapshot() as MachineSnapshotLike;
    if (snapshot.status !== 'active' || typeof snapshot.getMeta !== 'function') return;
    for (const meta of Object.values(snapshot.getMeta())) {
      const wait = (meta as { wait?: WaitDeclaration } | undefined)?.wait;
      if (!wait) continue;
      const timer = snapshot.children?.waitTimer?.getSnapshot() as { input?: { waitUntil?: unknown; waitingSince?: unknown } } | undefined;
      const until = timer?.input?.waitUntil;
      const since = timer?.input?.waitingSince;
      found.push({
        ref,
        actor: path.length ? path.join('/') : 'root',
        state: snapshot.value,
        for: wait.for,
        events: Object.keys(wait.events),
        schemas: wait.events,
        ...(typeof until === 'number' ? { until: new Date(until).toISOString() } : {}),
        ...(typeof since === 'number' ? { since: new Date(since).toISOString() } : {}),
      });
    }
    for (const [id, child] of Object.entries(snapshot.children ?? {})) if (child) visit(child, [...path, id]);
  };
  visit(root, []);
  return found;
}

/** Why an event was not applied: a code a program switches on, a line a person acts on. */
export class EventRefusedError extends Error {
  override readonly name = 'EventRefusedError';
  constructor(
    readonly code: 'EVENT_NOT_ACCEPTED' | 'INVALID_EVENT' | 'WAIT_EXPIRED' | 'STALE_EVENT',
    message: string,
  ) {
    super(message);
  }
}

/**
 * The wait that takes `event`, and its data parsed by that wait's schema; throws
 * EventRefusedError when no wait of the flow accepts it (saying what the flow accepts)
 * or its data is wrong. `sentAt` (epoch ms): an answer sent after a wait's deadline is
 * refused, so the deadline's path is taken even when the answer was kept for a flow
 * that was not running.
 */
export function matchWait(flowId: string, waits: readonly LiveWait[], event: SentEvent, sentAt?: number): { wait: LiveWait; data: unknown } {
  const wait = waits.find((w) => w.events.includes(event.type));
  if (!wait) {
    const accepted = [...new Set(waits.flatMap((w) => w.events))];
    throw new EventRefusedError(
      'EVENT_NOT_ACCEPTED',
      accepted.length
        ? `flow ${flowId} does not accept "${event.type}" now; it waits for: ${accepted.join(', ')}`
        : `flow ${flowId} waits for no event now (it is working, or has ended)`,
    );
  }
  if (event.forWait !== undefined && wait.since !== undefined && event.forWait !== wait.since) {
    throw new EventRefusedError('STALE_EVENT', `the "${event.type}" was sent for the wait that began ${event.forWait}; flow ${flowId} now waits since ${wait.since}: answer what it waits for now`);
  }
  if (sentAt !== undefined && wait.until !== undefined && sentAt > Date.parse(wait.until)) {
    throw new EventRefusedError('WAIT_EXPIRED', `flow ${flowId} stopped waiting for "${event.type}" at ${wait.until}; the answer came later`);
  }
  const parsed = wait.schemas[event.type]!.safeParse(event.data ?? {});
  if (!parsed.success) throw new EventRefusedError('INVALID_EVENT', `invalid "${event.type}" for flow ${flowId}: ${parsed.error.issues.map((i) => `${['data', ...i.path].join('.')}: ${i.message}`).join('; ')}`);
  return { wait, data: parsed.data };
}

/** The protocol's view of waits (no actor refs, no schemas). */
export const publicWaits = (waits: readonly LiveWait[]): FlowWait[] =>
  waits.map(({ actor, state, for: what, events, until, since }) => ({ actor, state, for: what, events, ...(until ? { until } : {}), ...(since ? { since } : {}) }));

/**
 * The waits of a flow no process here runs, from its stored snapshot: the machine is
 * restored (its actors created, none started: no side effect) only to be read.
 */
export function storedWaits(machine: AnyStateMachine, snapshot: unknown): LiveWait[] {
  return waitsOf(createActor(machine, { snapshot: snapshot as Snapshot<unknown> }) as AnyActorRef);
}
