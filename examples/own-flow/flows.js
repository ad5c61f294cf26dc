// Your own flow, as the README shows it: `microtask daemon --flows ./flows.js` (and the same
// --flows for `microtask worker` and `microtask run`). Plain ESM; the package, xstate and zod
// are this directory's dependencies (package.json).
import { addUsage, defineFlow, zeroUsage } from 'microtask-orchestrator';
import { assign, setup } from 'xstate';
import { z } from 'zod';

/**
 * Answer schemas by name. A microtask asks for one with `answer: 'triage'`: the model is told
 * the schema, and its answer is checked against it (on whichever worker runs the task).
 */
export const answers = {
  triage: z.object({
    severity: z.enum(['low', 'medium', 'high']).describe('how much it hurts users'),
    area: z.string().describe('the part of the product, one or two words'),
  }),
};

/** A degraded answer by task type, when the model could not answer (timeout, outage). */
export const fallbacks = {
  triage: () => ({ severity: 'medium', area: 'unknown', fallback: true }),
};

/**
 * `triage`: each issue triaged by a model call (the built-in parallel pattern, as a child:
 * four at once), then one more call writes the summary for the team.
 */
const triage = defineFlow({
  name: 'triage',
  version: 1,
  input: z.object({
    issues: z.array(z.string().min(1)).min(1).max(50),
    key: z.string().optional(),
  }),
  machine: (blocks) =>
    setup({
      // Invoked by these names: a saved snapshot names them, so a resumed flow finds them again.
      actors: { parallel: blocks.patterns.parallel, microtask: blocks.microtask },
    }).createMachine({
      id: 'triage',
      context: ({ input }) => ({ input, triaged: [], summary: undefined, usage: zeroUsage() }),
      initial: 'triaging',
      states: {
        triaging: {
          invoke: {
            src: 'parallel',
            input: ({ context }) => ({
              // Every microtask key starts with the flow's key: a resumed flow asks for the same keys.
              key: `${context.input.key}/triage`,
              concurrency: 4,
              tasks: context.input.issues.map((issue) => ({
                taskType: 'triage',
                system: 'You triage bug reports.',
                prompt: `Triage this issue: ${issue}`,
                answer: 'triage',
              })),
            }),
            onDone: {
              target: 'summarizing',
              actions: assign({
                triaged: ({ context, event }) =>
                  event.output.results.map((r, i) => ({ issue: context.input.issues[i], ...(r?.success ? r.result : r?.fallback) })),
                usage: ({ event }) => event.output.usage,
              }),
            },
          },
        },
        summarizing: {
          invoke: {
            src: 'microtask',
            input: ({ context }) => ({
              taskType: 'summary',
              key: `${context.input.key}/summary/0`,
              system: 'You write short status notes for an engineering team.',
              prompt: 'In one sentence, what should the team fix first?',
              data: context.triaged,
            }),
            onDone: {
              target: 'done',
              actions: assign({
                summary: ({ event }) => (event.output.success ? event.output.result : 'no summary: the model did not answer'),
                usage: ({ context, event }) => addUsage(context.usage, event.output.usage),
              }),
            },
          },
        },
        done: { type: 'final' },
      },
      // `status` and `usage` as the built-in patterns give them: `microtask run` prints `result`.
      output: ({ context }) => ({ status: 'done', result: { summary: context.summary, triaged: context.triaged }, usage: context.usage }),
    }),
});

export const flows = [triage];
