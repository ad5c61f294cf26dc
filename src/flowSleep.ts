import type { AnyActorRef } from 'xstate';

/**
 * A flow that waits for a person may wait for days; kept as a live actor tree it holds
 * tens of kilobytes (10,000 waiting flows: about 500 MB), and resuming it after a crash
 * rebuilds that tree. Asleep, the host keeps a few hundred bytes of it (its record without
 * the snapshot, and a timer for its earliest deadline) and restores it from the store when
 * something arrives: an event for it, its deadline, a cancel.
 *
 * A flow may sleep only when nothing but its waits can move it: every actor in its
 * persisted snapshot is a machine or a wait timer (no microtask, check or other actor in
 * flight), and no delayed event is scheduled (`after`, a delayed send: XState does not
 * restore those from a snapshot). Then restoring it later is the same as having kept it:
 * its waits are in its snapshot, and a wait timer keeps its absolute deadline in its input
 * (src/actors/waitTimer.ts), so it fires at once when restored after its deadline.
 *
 * Where things are in an XState 5 persisted snapshot: a machine's children are under
 * `children[id] = { snapshot, src }`; a machine's snapshot has a `value`; a callback
 * actor's (the wait timer) is `{ status, input }`.
 */

/** The actor source name of the wait timer in every machine that waits (src/machines/waits.ts). */
export const WAIT_TIMER_SRC = 'waitTimer';

/**
 * Whether a flow in this persisted snapshot can sleep, and when it must wake: `undefined`
 * when an actor other than a machine or a wait timer is in it; otherwise the earliest
 * deadline of its active wait timers (epoch ms), or no `wakeAt` when it waits without one.
 */
export function sleepPlan(snapshot: unknown): { wakeAt?: number } | undefined {
  let wakeAt: number | undefined;
  const walk = (actor: unknown): boolean => {
    if (!isRecord(actor) || actor.status !== 'active') return isRecord(actor);
    const children = actor.children;
    if (children === undefined) return true;
    if (!isRecord(children)) return false;
    for (const child of Object.values(children)) {
      if (!isRecord(child) || !isRecord(child.snapshot)) return false;
      const inner = child.snapshot;
      if (child.src === WAIT_TIMER_SRC && !('value' in inner)) {
        const until = isRecord(inner.input) ? inner.input.waitUntil : undefined;
        if (inner.status === 'active' && typeof until === 'number' && Number.isFinite(until)) wakeAt = wakeAt === undefined ? until : Math.min(wakeAt, until);
        continue;
      }
      // A machine (it has a state value) is walked; anything else (a promise actor in flight, a callback, an observable) keeps the flow awake.
      if (!('value' in inner)) {
        if (inner.status === 'active') return false;
        continue;
      }
      if (!walk(inner)) return false;
    }
    return true;
  };
  if (!isRecord(snapshot) || snapshot.status !== 'active' || !walk(snapshot)) return undefined;
  return wakeAt === undefined ? {} : { wakeAt };
}

/**
 * Whether the live actor system has delayed events scheduled (an `after`, a delayed send):
 * those are not in the persisted snapshot, so a flow that has any must stay awake. Read
 * from XState's system snapshot (`_scheduledEvents`, XState 5); when that cannot be read,
 * it answers true (stay awake) rather than guess.
 */
export function hasScheduledEvents(actor: AnyActorRef): boolean {
  const scheduled = (actor.system as { _snapshot?: { _scheduledEvents?: unknown } } | undefined)?._snapshot?._scheduledEvents;
  if (!isRecord(scheduled)) return true;
  for (const _ in scheduled) return true;
  return false;
}

const isRecord = (value: unknown): value is Record<string, unknown> => typeof value === 'object' && value !== null && !Array.isArray(value);
