import { z } from 'zod';
import { defineFlow } from '../flowCatalog.js';
import { BudgetSchema, TaskSpecSchema } from '../machines/common.js';
import { reentrantMachine } from '../machines/reentrant.js';
import { PersonOptionSchema } from '../machines/waits.js';
import { key } from './inputs.js';

/** A pass, a review (a model's or a person's), and the pass again with the review, up to `maxRevisions`. */
export const reentrant = defineFlow({
  name: 'reentrant',
  version: 1,
  input: z
    .object({
      key,
      task: TaskSpecSchema,
      review: TaskSpecSchema.optional(),
      personReview: PersonOptionSchema.optional(),
      input: z.unknown(),
      maxRevisions: z.number().int().min(0).max(20),
      budget: BudgetSchema.optional(),
    })
    .refine((i) => (i.review === undefined) !== (i.personReview === undefined), {
      error: 'give `review` (the model reviews each pass) or `personReview` (a person does), one of the two',
      path: ['review'],
    }),
  machine: (blocks) => reentrantMachine.provide({ actors: { microtask: blocks.microtask, check: blocks.check, waitTimer: blocks.waitTimer } }),
  result: (output) => output.output,
});
