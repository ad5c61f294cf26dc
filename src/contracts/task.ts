import { z } from 'zod';

/**
 * The input of the task actor (FlowBlocks.task): which of the module's tasks to run, with
 * what, under which idempotency key. JSON: it is saved in the flow's snapshot and sent to
 * workers, and a restored flow runs the task again from it unless its result is stored.
 */
export const TaskInputSchema = z.object({
  /** The task's name in the module's `tasks`. */
  task: z.string().min(1),
  /**
   * Idempotency key, derived by the machine from its flow's key (`${context.key}/enrich`):
   * a result stored under it is returned without running the task again.
   */
  key: z.string().min(1),
  /** What the task's `run` is given, once its input schema accepted it. */
  input: z.unknown().optional(),
});
export type TaskInput = z.input<typeof TaskInputSchema>;

/**
 * A task on the work queue, beside the microtasks: `kind: 'task'` tells it from one (a
 * microtask's job has no `kind`), `deadlineAt` (epoch ms) bounds how long it may run, time
 * queued included. docs/protocol.md documents it.
 */
export const TaskJobSchema = TaskInputSchema.extend({ kind: z.literal('task'), deadlineAt: z.number() });
export type TaskJob = z.infer<typeof TaskJobSchema>;

/** A task's name: what a module's `tasks` may be keyed by (an identifier, or with dashes). */
export const TASK_NAME = /^[A-Za-z][A-Za-z0-9_-]{0,62}$/;
