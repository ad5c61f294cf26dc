import { z } from 'zod';
import { defineFlow } from '../flowCatalog.js';
import { BudgetSchema, TaskSpecSchema } from '../machines/common.js';
import { progressiveMachine } from '../machines/progressive.js';
import { count, key, threshold } from './inputs.js';
import { childPattern } from './child.js';

/** Escalate until an answer passes: code-only repair, a general model call, a specialist, the metacognitive pattern. */
export const progressive = defineFlow({
  name: 'progressive',
  version: 1,
  input: z.object({
    key,
    task: TaskSpecSchema,
    verify: TaskSpecSchema,
    threshold,
    specialist: z.object({ system: z.string().min(1) }),
    maxAttempts: count(10).optional(),
    startLevel: z.union([z.literal(0), z.literal(1), z.literal(2), z.literal(3)]).optional(),
    budget: BudgetSchema.optional(),
  }),
  machine: (blocks) =>
    progressiveMachine.provide({
      actors: { microtask: blocks.microtask, check: blocks.check, codeOnly: blocks.codeOnly, metacognitive: childPattern(blocks, 'metacognitive', 'progressive') },
    }),
});
