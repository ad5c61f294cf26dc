import { z } from 'zod';
import { defineFlow } from '../flowCatalog.js';
import { BudgetSchema, TaskSpecSchema } from '../machines/common.js';
import { feedbackLoopMachine } from '../machines/feedbackLoop.js';
import { PersonOptionSchema } from '../machines/waits.js';
import { count, key, threshold } from './inputs.js';

/** Generate, verify (a model or a person scores it), feed the critique back, until the score passes. */
export const feedbackLoop = defineFlow({
  name: 'feedback-loop',
  version: 1,
  input: z
    .object({
      key,
      task: TaskSpecSchema,
      verify: TaskSpecSchema.optional(),
      personVerify: PersonOptionSchema.optional(),
      threshold,
      maxIterations: count(20),
      budget: BudgetSchema.optional(),
    })
    .refine((i) => (i.verify === undefined) !== (i.personVerify === undefined), {
      error: 'give `verify` (the model scores each attempt) or `personVerify` (a person does), one of the two',
      path: ['verify'],
    }),
  machine: (blocks) => feedbackLoopMachine.provide({ actors: { microtask: blocks.microtask, check: blocks.check, waitTimer: blocks.waitTimer } }),
});
