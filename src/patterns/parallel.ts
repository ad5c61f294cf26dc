import { z } from 'zod';
import type { MicrotaskResult } from '../contracts/microtask.js';
import { defineFlow } from '../flowCatalog.js';
import { BudgetSchema, TaskSpecSchema } from '../machines/common.js';
import { parallelMachine } from '../machines/parallel.js';
import { count, key } from './inputs.js';

/** Many microtasks, at most `concurrency` at once, each with its own fallback. */
export const parallel = defineFlow({
  name: 'parallel',
  version: 1,
  input: z.object({
    key,
    tasks: z.array(TaskSpecSchema).min(1).max(10_000),
    concurrency: count(256),
    budget: BudgetSchema.optional(),
  }),
  machine: (blocks) => parallelMachine.provide({ actors: { microtask: blocks.microtask } }),
  // Each task's answer, in input order; a failed one shows its fallback and why.
  result: (output) =>
    (output.results as Array<MicrotaskResult | null>).map((r) => (r === null ? null : r.success ? r.result : { failed: r.error?.kind, fallback: r.fallback })),
});
