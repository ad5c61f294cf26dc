/**
 * The check that keeps the figures honest: a setup's flows store every transition. For a
 * pattern and input (the instant model is deterministic, so every flow makes the same
 * transitions) it counts the distinct snapshots the machine passes through, run bare with
 * an inspector; each setup then shows the steps it stored for the flows it ran, which
 * must be exactly 1..that count (none merged away, none missing).
 */
import { createActor, type AnyActorRef } from 'xstate';
import { createMicrotaskLogic, MicrotaskRunner } from '../src/actors/microtask.js';
import { MemoryResultsStore } from '../src/actors/ResultsStore.js';
import { provideFlows } from '../src/flows.js';
import { answerSchemas } from '../src/contracts/answers.js';
import { benchModel } from './lib.js';
import type { Pattern } from './setups.js';

/** How many snapshots a flow of `pattern` passes through: its start and each transition of any of its actors that changed it. */
export async function transitionsOf(pattern: Pattern, input: Record<string, unknown>): Promise<number> {
  const runner = new MicrotaskRunner({ model: benchModel(), results: new MemoryResultsStore(), answers: answerSchemas });
  const flows = provideFlows({ microtask: createMicrotaskLogic(runner) });
  let root: AnyActorRef | undefined;
  let last = '';
  let count = 0;
  const actor = createActor(pattern === 'microtask' ? flows.catalog.machineOf('microtask') : flows.catalog.machineOf('feedback-loop'), {
    input: { ...input, key: `steps-${Date.now()}` } as never,
    inspect: (event) => {
      if (event.type !== '@xstate.snapshot' || !root) return;
      const json = JSON.stringify(root.getPersistedSnapshot());
      if (json !== last) {
        last = json;
        count++;
      }
    },
  });
  root = actor;
  last = JSON.stringify(actor.getPersistedSnapshot());
  count = 1;
  const done = new Promise<void>((resolve) => actor.subscribe({ complete: () => resolve() }));
  actor.start();
  await done;
  return count;
}

/** What a setup stored for some of its flows: each flow's step numbers, in order. */
export type StoredSteps = Array<{ flowId: string; steps: number[] }>;

/** '' when every flow stored steps 1..expected; else what is wrong, for the table. */
export function checkSteps(stored: StoredSteps, expected: number): string {
  if (stored.length === 0) return 'no flow to check';
  for (const { flowId, steps } of stored) {
    const ok = steps.length === expected && steps.every((s, i) => s === i + 1);
    if (!ok) return `flow ${flowId}: steps ${steps.join(',')} (expected 1..${expected})`;
  }
  return '';
}

/** Problems found by the checks of this run: the bench exits 1 when there is one. */
export const stepProblems: string[] = [];

/** The table's cell for a check, remembering a failure for the exit code. */
export function stepsVerdict(problem: string, expected: number): string {
  if (!problem) return `yes (${expected} per flow)`;
  stepProblems.push(problem);
  return `NO: ${problem}`;
}
