import { fromCallback } from 'xstate';
import { z } from 'zod';
import { WAIT_TIMEOUT, type WaitTimerInput } from '../contracts/waits.js';

export { WAIT_TIMEOUT, type WaitTimerInput };

/**
 * Waiting for a person or an outside event, as a machine declares it (pure: xstate and
 * zod only). A state that waits says so in its `meta.wait`: what it waits for (a sentence
 * for people) and the events it accepts, each with the zod schema of its data. The host
 * reads these to validate what is sent to a flow (src/flowWaits.ts), to show what a flow
 * waits for, and to route an event to the actor that waits (a child of the tool builder).
 *
 * A wait may have a deadline: the state invokes the `waitTimer` actor with `timeoutMs`,
 * and takes its `wait.timeout` transition when the deadline passes. XState's `after`
 * would be lost with the process; the timer actor keeps its absolute deadline in its input
 * (like a microtask's `deadlineAt`), which is in the flow's snapshot, so a restarted host
 * fires it on time, or at once when it passed while no process ran the flow. Nothing polls.
 */

/** What a person answers a review with: the reentrant pipeline's pass, the tool builder's approval. */
export const ReviewAnswerSchema = z.object({
  approved: z.boolean(),
  feedback: z.string().max(20_000).default(''),
});
export type ReviewAnswer = z.infer<typeof ReviewAnswerSchema>;

/** What a person answers a verification with: a score in 0..1 and why. */
export const ScoreAnswerSchema = z.object({
  score: z.number().min(0).max(1),
  feedback: z.string().max(20_000).default(''),
});
export type ScoreAnswer = z.infer<typeof ScoreAnswerSchema>;


/** A wait, as a state's `meta.wait` declares it. */
export interface WaitDeclaration {
  /** What the flow waits for, for people: "a person's review of pass 2". */
  for: string;
  /** The events it accepts, by type, each with the schema of its `data`. */
  events: Record<string, z.ZodType>;
}

/** The option that gives a judgement to a person instead of the model. */
const MAX_WAIT_MS = 366 * 24 * 3_600_000;
const waitError = `a whole number of milliseconds between 1 and ${MAX_WAIT_MS} (a year)`;
export const PersonOptionSchema = z.object({
  /** How long the person has; unset: no deadline. Not a microtask's `timeoutMs` (10 minutes at most): a wait may last days. */
  maxWaitMs: z.number({ error: waitError }).int({ error: waitError }).min(1, { error: waitError }).max(MAX_WAIT_MS, { error: waitError }).optional(),
});
export type PersonOption = z.infer<typeof PersonOptionSchema>;


/** Stand-in until the host provides the real timer (src/actors/waitTimer.ts). */
export const waitTimerNotProvided = () =>
  fromCallback<{ type: string }, WaitTimerInput>(() => {
    throw new Error('the "waitTimer" actor was not provided: create the machine with machine.provide({ actors: { waitTimer: ... } }) (see src/flows.ts)');
  });
