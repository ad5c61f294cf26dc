import { fromCallback, type CallbackActorLogic, type EventObject } from 'xstate';
import { WAIT_TIMEOUT, type WaitTimerInput } from '../contracts/waits.js';

/** setTimeout fires at once past this (2^31-1 ms, about 24.8 days): a longer wait is timed in laps. */
const MAX_TIMER_MS = 2_147_483_647;

/**
 * A wait's deadline (src/machines/waits.ts), as a callback actor: it sends `wait.timeout`
 * to the waiting machine when its deadline passes, and nothing before. The absolute
 * deadline (`waitUntil`) is put in its input when it first starts, so it is in the flow's
 * snapshot: restored, the actor keeps it, and fires at once when it passed while no
 * process ran the flow. It is never moved on resume (unlike a microtask's `deadlineAt`,
 * src/resumeDeadlines.ts): a person's deadline is a time of day, not a running clock.
 * One timer per waiting flow, no polling; no `timeoutMs`, no timer.
 */
export function createWaitTimerLogic(): CallbackActorLogic<EventObject, WaitTimerInput> {
  const logic = fromCallback<EventObject, WaitTimerInput>(({ input, sendBack }) => {
    const until = input.waitUntil;
    if (until === undefined) return undefined;
    let timer: NodeJS.Timeout | undefined;
    const arm = () => {
      const left = until - Date.now();
      if (left <= 0) {
        // After the restored flow's own start, never inside it: an answer kept for the
        // flow (the host delivers those first) is applied before the deadline's path.
        timer = setTimeout(() => sendBack({ type: WAIT_TIMEOUT }), 0);
        return;
      }
      timer = setTimeout(arm, Math.min(left, MAX_TIMER_MS));
    };
    arm();
    return () => clearTimeout(timer);
  });
  return {
    ...logic,
    getInitialSnapshot: (scope, input) =>
      logic.getInitialSnapshot(scope, {
        ...input,
        ...(input.waitingSince === undefined ? { waitingSince: Date.now() } : {}),
        ...(input.waitUntil === undefined && input.timeoutMs !== undefined ? { waitUntil: Date.now() + input.timeoutMs } : {}),
      }),
  };
}
