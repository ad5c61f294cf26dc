import { z } from 'zod';
import { timeoutMsSchema } from '../contracts/limits.js';
import { defineFlow } from '../flowCatalog.js';
import { BudgetSchema, TaskSpecSchema } from '../machines/common.js';
import { metacognitiveMachine } from '../machines/metacognitive.js';
import { count, key } from './inputs.js';

/** Try, and on failure have the model analyse why and adjust the approach before trying again. */
export const metacognitive = defineFlow({
  name: 'metacognitive',
  version: 1,
  input: z.object({
    key,
    task: TaskSpecSchema,
    analyze: z.object({ system: z.string().optional(), prompt: z.string().optional(), timeoutMs: timeoutMsSchema().optional() }).optional(),
    maxAttempts: count(10),
    onAnalysisFailure: z.enum(['retry', 'fail']).optional(),
    budget: BudgetSchema.optional(),
  }),
  machine: (blocks) => metacognitiveMachine.provide({ actors: { microtask: blocks.microtask, check: blocks.check } }),
});
