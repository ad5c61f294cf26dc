import { z } from 'zod';

/**
 * What a flow waits for, and an event sent to it, as the protocol carries them: the
 * snapshot stores keep the one, the daemon and the inbox carry the other (src/flowWaits.ts
 * reads waits from a running flow).
 */

/** A wait as the protocol shows it (flow.get, `microtask flows`, the inspector). */
export const FlowWaitSchema = z.object({
  /** `root`, or the path of the waiting child (`module-auth`), as in the journal. */
  actor: z.string(),
  /** The waiting actor's state. */
  state: z.unknown(),
  /** What it waits for, for people. */
  for: z.string(),
  /** The event types it accepts. */
  events: z.array(z.string()),
  /** When it stops waiting and takes its timeout path (ISO 8601); absent: no deadline. */
  until: z.iso.datetime({ offset: true }).optional(),
  /**
   * When this wait began (ISO 8601, to the millisecond): names it. An answer checked against
   * one wait is not applied to a later one (a new pass nobody has seen).
   */
  since: z.iso.datetime({ offset: true }).optional(),
});
export type FlowWait = z.infer<typeof FlowWaitSchema>;

/** An event sent to a flow, as the protocol carries it. */
export const SentEventSchema = z.object({
  /** Makes sending twice harmless: an id already applied to the flow is not applied again. */
  eventId: z.string().min(1).max(200).regex(/^[A-Za-z0-9._:-]+$/, 'use letters, digits and . _ : - only'),
  type: z.string().min(1).max(100),
  data: z.unknown().optional(),
  /** The wait it answers (that wait's `since`): set when it was checked against one; not applied to another. */
  forWait: z.iso.datetime({ offset: true }).optional(),
});
export type SentEvent = z.infer<typeof SentEventSchema>;

/** The event a wait's deadline sends. */
export const WAIT_TIMEOUT = 'wait.timeout';

/** The timer actor's input: the wait's length, and (set when it first starts) its absolute deadline. */
export interface WaitTimerInput {
  timeoutMs?: number;
  /** Epoch ms; kept across restores, never moved (a person's deadline is wall-clock time). */
  waitUntil?: number;
  /** Epoch ms, set when it first starts: when the wait began, which names it. */
  waitingSince?: number;
}

/**
 * Kept in a flow's inbox by `microtask cancel` in embedded mode, after it wrote the record
 * cancelled: the process running the flow (a `run`, the library's orchestrator) follows the
 * inbox and stops it. A flow that only waits saves nothing, so it would not find out by a
 * refused save, and one asleep is not even in memory. Never applied to a machine.
 */
export const CANCEL_NOTICE = 'microtask.cancelled';

/** An event sent to a flow, with when it was sent (epoch ms) when that is known. */
export type KeptEvent = SentEvent & { sentAt?: number };
