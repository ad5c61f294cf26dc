import { fromPromise } from 'xstate';
import { z } from 'zod';
import { TaskSpecSchema, type MicrotaskInput, type MicrotaskResult, type TaskSpec } from '../contracts/microtask.js';
import type { CheckInput, CheckResult } from '../contracts/deterministicActors.js';
import { totalTokens, zeroUsage, type Usage } from '../contracts/usage.js';


/** Limits on what a flow may spend; the flow stops cleanly, keeping its best result, before going over. */
export const BudgetSchema = z.object({
  maxTokens: z.number().int().positive().optional(),
  maxCalls: z.number().int().positive().optional(),
});
export type Budget = z.infer<typeof BudgetSchema>;

/**
 * How a flow ended. `done`: it reached its goal. `exhausted`: it ran out of iterations,
 * attempts or levels and returns its best. `budget_exceeded`: it stopped before going over
 * its budget, keeping its best. `failed`: it could not produce anything usable.
 */
export type FlowStatus = 'done' | 'exhausted' | 'budget_exceeded' | 'failed';

/** A pattern's final states, by name, and the status each records. */
const finalStatus = { done: 'done', exhausted: 'exhausted', budgetExceeded: 'budget_exceeded', failed: 'failed' } as const;
type FinalState = keyof typeof finalStatus;

/**
 * A pattern's final states, written once: each records its status with the machine's
 * `setStatus` action on entry (every pattern's output reports it). A pattern lists those it can end in.
 */
export function finalStates<const S extends FinalState>(...names: S[]) {
  return Object.fromEntries(names.map((name) => [name, { type: 'final', entry: { type: 'setStatus', params: { status: finalStatus[name] } } }])) as {
    [K in S]: { type: 'final'; entry: { type: 'setStatus'; params: { status: (typeof finalStatus)[K] } } };
  };
}

/** Every flow's output has these: how it ended, why, and what it spent. */
export interface FlowOutputBase {
  status: FlowStatus;
  reason?: string;
  usage: Usage;
}

export function microtaskInput(spec: TaskSpec, key: string, overrides: Partial<TaskSpec> = {}): MicrotaskInput {
  const merged = { ...spec, ...overrides };
  return {
    taskType: merged.taskType,
    key,
    system: merged.system,
    prompt: merged.prompt,
    ...(merged.data !== undefined ? { data: merged.data } : {}),
    ...(merged.answer !== undefined ? { answer: merged.answer } : {}),
    ...(merged.timeoutMs !== undefined ? { timeoutMs: merged.timeoutMs } : {}),
    ...(merged.maxTokens !== undefined ? { maxTokens: merged.maxTokens } : {}),
    ...(merged.model !== undefined ? { model: merged.model } : {}),
  };
}

/**
 * Whether one more model call fits the budget. A call's cost is unknown before it is
 * made, so the check is: calls left, and tokens not yet used up.
 */
export function budgetCheck(budget: Budget | undefined, usage: Usage): { ok: true } | { ok: false; reason: string } {
  if (budget?.maxCalls !== undefined && usage.calls + 1 > budget.maxCalls) {
    return { ok: false, reason: `the budget of ${plural(budget.maxCalls, 'model call')} is spent (${usage.calls} made)` };
  }
  if (budget?.maxTokens !== undefined && totalTokens(usage) >= budget.maxTokens) {
    return {
      ok: false,
      reason: `the budget of ${budget.maxTokens} tokens is spent (${totalTokens(usage)} used)`,
    };
  }
  return { ok: true };
}

const plural = (n: number, what: string) => `${n} ${what}${n === 1 ? '' : 's'}`;

/**
 * What is left of a budget after `usage`, for a child flow. It can be 0: the child then
 * stops before its first call, and the parent with it.
 */
export function remainingBudget(budget: Budget | undefined, usage: Usage): Budget | undefined {
  if (!budget) return undefined;
  return {
    ...(budget.maxTokens !== undefined ? { maxTokens: Math.max(0, budget.maxTokens - totalTokens(usage)) } : {}),
    ...(budget.maxCalls !== undefined ? { maxCalls: Math.max(0, budget.maxCalls - usage.calls) } : {}),
  };
}

/** The answer of a microtask, or its fallback when it failed. */
export const answerOf = (result: MicrotaskResult): unknown => (result.success ? result.result : result.fallback);

/** A short account of a failed microtask, for reasons and prompts. */
export const describeFailure = (result: MicrotaskResult): string =>
  result.success ? 'succeeded' : `${result.error?.kind ?? 'failed'}: ${result.error?.message ?? 'no message'}`;

/**
 * Stand-in logic for actors a machine registers by name and whose real logic is given by
 * `.provide()` (locally, or a proxy to a worker over the bus). Running it means the
 * provide was forgotten, and it says so.
 */
export function notProvided<TOutput, TInput>(name: string) {
  return fromPromise<TOutput, TInput>(async () => {
    throw new Error(
      `the "${name}" actor was not provided: create the machine with machine.provide({ actors: { ${name}: ... } }) (see src/flows.ts)`,
    );
  });
}

export const microtaskNotProvided = () => notProvided<MicrotaskResult, MicrotaskInput>('microtask');

export { zeroUsage, TaskSpecSchema, type TaskSpec, type CheckInput, type CheckResult };

export const checkNotProvided = () => notProvided<CheckResult, CheckInput>('check');

/** The diagnostic of a check that could not run: a failed check, never a pass. */
export const checkCrashed = (error: unknown): string => `the check itself failed: ${errorInfo(error).message}`;

/** An error as context can hold it: JSON-safe, unlike an Error object. */
export const errorInfo = (error: unknown): { name: string; message: string } =>
  error instanceof Error ? { name: error.name, message: error.message } : { name: 'Error', message: String(error) };
