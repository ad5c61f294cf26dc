import { assign, setup as machineSetup } from 'xstate';
import { z } from 'zod';
import { defineTask, type Tasks } from '../../src/actors/task.js';
import { defineFlow } from '../../src/flowCatalog.js';

type EnrichContext = { input: { text: string; key: string }; normalized: any; score: any };

/**
 * A user's flow of two tasks: `normalize` (its text trimmed and lowercased), then `score`
 * (its length). Each task's envelope goes into the output as the machine saw it.
 */
export const enrichFlow = defineFlow({
  name: 'enrich',
  version: 1,
  input: z.object({ text: z.string(), key: z.string().optional() }),
  machine: (blocks) =>
    machineSetup({
      types: {} as { input: { text: string; key: string }; context: EnrichContext },
      actors: { task: blocks.task },
    }).createMachine({
      id: 'enrich',
      context: ({ input }) => ({ input, normalized: undefined, score: undefined }),
      initial: 'normalizing',
      states: {
        normalizing: {
          invoke: {
            src: 'task',
            input: ({ context }: { context: EnrichContext }) => ({ task: 'normalize', key: `${context.input.key}/normalize`, input: { text: context.input.text } }),
            onDone: [
              { guard: ({ event }) => event.output.success, target: 'scoring', actions: assign({ normalized: ({ event }) => event.output }) },
              // A failure is the machine's to handle: here it ends the flow saying why.
              { target: 'done', actions: assign({ normalized: ({ event }) => event.output }) },
            ],
          },
        },
        scoring: {
          invoke: {
            src: 'task',
            input: ({ context }: { context: EnrichContext }) => ({ task: 'score', key: `${context.input.key}/score`, input: { text: context.normalized.result } }),
            onDone: { target: 'done', actions: assign({ score: ({ event }) => event.output }) },
          },
        },
        done: { type: 'final' },
      },
      output: ({ context }) => ({ status: 'done', result: { normalized: context.normalized, score: context.score } }),
    }),
});

/** The example's tasks, counting their runs; `score` waits for `gate` when given one. */
export function countingTasks(runs: string[], gate?: Promise<void>): Tasks {
  return {
    normalize: defineTask({
      input: z.object({ text: z.string() }),
      run: ({ text }, { key }) => {
        runs.push(`normalize ${key}`);
        if (text === 'boom') throw new Error('cannot normalize "boom"');
        return text.trim().toLowerCase();
      },
    }),
    score: defineTask({
      input: z.object({ text: z.string() }),
      run: async ({ text }) => {
        runs.push('score');
        await gate;
        return { length: text.length };
      },
    }),
  };
}
