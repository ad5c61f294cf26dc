// flows.js: `microtask daemon --flows ./flows.js` (and the same for worker and run)
import { addUsage, defineFlow, zeroUsage } from 'microtask-orchestrator';
import { assign, setup } from 'xstate';
import { z } from 'zod';

// Answer schemas by name: a microtask asks for one with `answer: 'triage'`; the model's answer is checked against it.
export const answers = {
  triage: z.object({
    severity: z.enum(['low', 'medium', 'high']).describe('how much it hurts users'),
    area: z.string().describe('the part of the product, one or two words'),
  }),
};

// A degraded answer by task type, when the model gave none that fits (a timeout, an outage, a wrong shape).
export const fallbacks = {
  triage: () => ({ severity: 'medium', area: 'unknown', fallback: true }),
};

export const flows = [
  defineFlow({
    name: 'triage',
    version: 1, // bump it when older snapshots can no longer be resumed by this machine
    input: z.object({ issues: z.array(z.string().min(1)).min(1).max(50), key: z.string().optional() }),
    machine: (blocks) =>
      setup({
        // Invoked by name: a saved snapshot names them, so a resumed flow finds them again.
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
                key: `${context.input.key}/triage`, // the flow's key: its id unless the input gives one
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
        // As the built-in patterns end: `status` (failed or not), `result` (what `microtask run` prints), `usage`.
        output: ({ context }) => ({ status: 'done', result: { summary: context.summary, triaged: context.triaged }, usage: context.usage }),
      }),
  }),
];
