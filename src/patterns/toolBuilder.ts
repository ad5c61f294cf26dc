import { z } from 'zod';
import { timeoutMsSchema } from '../contracts/limits.js';
import { ToolSpecSchema } from '../contracts/toolSpec.js';
import { defineFlow } from '../flowCatalog.js';
import { BudgetSchema } from '../machines/common.js';
import { toolBuilderMachine } from '../machines/toolBuilder.js';
import { PersonOptionSchema } from '../machines/waits.js';
import { childPattern } from './child.js';
import { count, key, threshold } from './inputs.js';

/** Builds a command-line tool from a spec by composing the other patterns; writes it under the runner's output root. */
export const toolBuilder = defineFlow({
  name: 'tool-builder',
  version: 2,
  input: z.object({
    key,
    spec: ToolSpecSchema,
    threshold: threshold.optional(),
    maxIterations: count(20).optional(),
    maxRevisions: z.number().int().min(0).max(20).optional(),
    maxAttempts: count(10).optional(),
    timeoutMs: timeoutMsSchema().optional(),
    budget: BudgetSchema.optional(),
    approval: PersonOptionSchema.optional(),
  }),
  machine: (blocks) => {
    const child = (name: string) => childPattern(blocks, name, 'tool-builder');
    return toolBuilderMachine.provide({
      actors: {
        parallel: child('parallel'),
        feedbackLoop: child('feedbackLoop'),
        progressive: child('progressive'),
        reentrant: child('reentrant'),
        metacognitive: child('metacognitive'),
        writeTool: blocks.writeTool,
        waitTimer: blocks.waitTimer,
      },
    });
  },
  // The output root is the runner's to choose (MICROTASK_STATE_DIR or --out), never a client's.
  prepare: (_input, runner) => ({ outRoot: runner.outRoot }),
  result: (output) => output.dir,
});
