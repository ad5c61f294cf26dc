// flows.js: `microtask daemon --flows ./flows.js` (and the same for worker and run)
import { appendFile } from 'node:fs/promises';
import { addUsage, defineFlow, defineTask, zeroUsage } from 'microtask-orchestrator';
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

// Your own steps, run by name with an idempotency key (in the daemon, or on a worker started with the same --flows).
// A result is stored under its key: a flow resumed after a crash gets it back, the step is not run twice.
const severities = ['high', 'medium', 'low'];
export const tasks = {
  rank: defineTask({
    input: z.object({ triaged: z.array(z.object({ issue: z.string(), severity: z.enum(severities) })) }),
    run: async ({ triaged }, { key }) => {
      const ranked = [...triaged].sort((a, b) => severities.indexOf(a.severity) - severities.indexOf(b.severity)).map((t) => t.issue);
      // A side effect, done once per flow: the team's log of what was ranked.
      await appendFile('triage-log.jsonl', `${JSON.stringify({ key, ranked })}\n`);
      return ranked;
    },
  }),
};

export const flows = [
  defineFlow({
    name: 'triage',
    version: 1, // bump it when older snapshots can no longer be resumed by this machine
    input: z.object({ issues: z.array(z.string().min(1)).min(1).max(50), key: z.string().optional() }),
    machine: (blocks) =>
      setup({
        // Invoked by name: a saved snapshot names them, so a resumed flow finds them again.
        actors: { parallel: blocks.patterns.parallel, microtask: blocks.microtask, task: blocks.task },
      }).createMachine({
        id: 'triage',
        context: ({ input }) => ({ input, triaged: [], ranked: [], summary: undefined, usage: zeroUsage() }),
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
                target: 'ranking',
                actions: assign({
                  triaged: ({ context, event }) =>
                    event.output.results.map((r, i) => ({ issue: context.input.issues[i], ...(r?.success ? r.result : r?.fallback) })),
                  usage: ({ event }) => event.output.usage,
                }),
              },
            },
          },
          ranking: {
            invoke: {
              src: 'task',
              input: ({ context }) => ({ task: 'rank', key: `${context.input.key}/rank`, input: { triaged: context.triaged } }),
              onDone: {
                target: 'summarizing',
                // A task that failed (it threw) is a result like any other: here, the order as triaged.
                actions: assign({ ranked: ({ context, event }) => (event.output.success ? event.output.result : context.triaged.map((t) => t.issue)) }),
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
                data: { ranked: context.ranked, triaged: context.triaged },
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
        output: ({ context }) => ({ status: 'done', result: { summary: context.summary, ranked: context.ranked, triaged: context.triaged }, usage: context.usage }),
      }),
  }),
];
