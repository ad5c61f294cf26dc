import { z } from 'zod';
import { defineFlow } from '../flowCatalog.js';
import { BudgetSchema, TaskSpecSchema } from '../machines/common.js';
import { incrementalMachine } from '../machines/incremental.js';
import { key } from './inputs.js';

/** One microtask per item, only for the items not done before (`previous`). */
export const incremental = defineFlow({
  name: 'incremental',
  version: 1,
  input: z.object({
    key,
    items: z.array(z.unknown()).max(100_000),
    task: TaskSpecSchema,
    previous: z.object({ results: z.array(z.any()) }).optional(),
    budget: BudgetSchema.optional(),
  }),
  machine: (blocks) => incrementalMachine.provide({ actors: { microtask: blocks.microtask } }),
  // Each item's answer, in input order; one not done says why.
  result: (output) =>
    (output.results as Array<{ status: string; result?: unknown; error?: string }>).map((r) => (r.status === 'done' ? r.result : { [r.status]: r.error ?? true })),
});
