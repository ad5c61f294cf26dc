import { z } from 'zod';
import { maxTokensSchema, timeoutMsSchema } from './limits.js';
import { UsageSchema } from './usage.js';

import { MAX_MICROTASK_TIMEOUT_MS } from './limits.js';

export { MAX_MICROTASK_TIMEOUT_MS, MAX_TOKENS } from './limits.js';

/**
 * The deadline a microtask keeps: its own, but no further than the longest timeout from
 * now. One years away (a client's, a clock gone wrong) would make every timer set from it
 * overflow: Node clamps a delay above 2^31-1 ms to 1 ms, so the call was cut off at once.
 */
export const boundedDeadline = (deadlineAt: number, now = Date.now()): number => Math.min(deadlineAt, now + MAX_MICROTASK_TIMEOUT_MS);

/**
 * A microtask as a flow's input describes it: everything but the idempotency key, which
 * the machine derives (flow key + path + attempt) so that a restored flow asks for the
 * same keys again.
 */
export const TaskSpecSchema = z.object({
  taskType: z.string().min(1),
  system: z.string(),
  prompt: z.string(),
  data: z.unknown().optional(),
  answer: z.string().optional(),
  timeoutMs: timeoutMsSchema().optional(),
  maxTokens: maxTokensSchema().optional(),
  model: z.string().optional(),
});
export type TaskSpec = z.infer<typeof TaskSpecSchema>;

/**
 * The input of one microtask. JSON-safe: it is persisted in the flow's snapshot and sent
 * over the bus, and a restored flow runs the microtask again from it.
 */
export const MicrotaskInputSchema = z.object({
  /** Picks the fallback and names the task in logs: `summarize`, `verify`, ... */
  taskType: z.string().min(1),
  /**
   * Idempotency key (flow id + path + attempt): a result stored under it is returned
   * without calling the model again.
   */
  key: z.string().min(1),
  system: z.string(),
  prompt: z.string(),
  data: z.unknown().optional(),
  /** Name of a registered answer schema; a text answer when unset. */
  answer: z.string().optional(),
  /** Unset: the runner's default (MICROTASK_TIMEOUT_MS). */
  timeoutMs: timeoutMsSchema().optional(),
  /**
   * Absolute deadline (epoch ms). When set it wins over `timeoutMs`, so a microtask that
   * runs again after a restore keeps its original deadline instead of starting over.
   */
  deadlineAt: z.number().optional(),
  maxTokens: maxTokensSchema().optional(),
  model: z.string().optional(),
});
export type MicrotaskInput = z.input<typeof MicrotaskInputSchema>;

export const MicrotaskErrorKindSchema = z.enum([
  'timeout',
  'cancelled',
  'rate_limited',
  'unavailable',
  'invalid_request',
  'auth',
  'billing',
  'model_not_found',
  'invalid_output',
  'refused',
  'max_tokens',
  'cassette_miss',
  'unknown_answer_schema',
  // A task of the user's module (src/actors/task.ts): its function threw, or no process that ran it knows its name.
  'task_failed',
  'unknown_task',
  'unknown',
]);
export type MicrotaskErrorKind = z.infer<typeof MicrotaskErrorKindSchema>;

/**
 * The kinds no retry, no fallback and no later call helps (a refused key, an account
 * without credit, a model that does not exist), with the code the flow that meets one ends
 * `failed` with, at once: `error.code` of its done message and of `flow.get`.
 */
export const FLOW_STOP_CODES = {
  auth: 'MODEL_AUTH',
  billing: 'MODEL_BILLING',
  model_not_found: 'MODEL_NOT_FOUND',
} as const satisfies Partial<Record<MicrotaskErrorKind, string>>;
export type FlowStopCode = (typeof FLOW_STOP_CODES)[keyof typeof FLOW_STOP_CODES];

/** The code a failure of this kind stops its flow with, or undefined when the flow goes on (falls back). */
export const flowStopCode = (kind: string | undefined): FlowStopCode | undefined =>
  kind !== undefined && Object.hasOwn(FLOW_STOP_CODES, kind) ? FLOW_STOP_CODES[kind as keyof typeof FLOW_STOP_CODES] : undefined;

/** Whether a flow's `error.code` is one of these: the user's to fix (the key, the account, the model). */
export const isFlowStopCode = (code: string | undefined): code is FlowStopCode =>
  code !== undefined && (Object.values(FLOW_STOP_CODES) as string[]).includes(code);

export const MicrotaskErrorSchema = z.object({
  kind: MicrotaskErrorKindSchema,
  message: z.string(),
  retryable: z.boolean(),
  status: z.number().optional(),
  requestId: z.string().optional(),
  retryAfterMs: z.number().optional(),
});
export type MicrotaskError = z.infer<typeof MicrotaskErrorSchema>;

/**
 * What every microtask ends with: this envelope, not a thrown error. A failure of a
 * {@link FLOW_STOP_CODES} kind is one too (a worker stores it for its flow), but the
 * microtask actor rejects with a FlowStopError on it: its flow stops, nothing falls back.
 */
export const MicrotaskResultSchema = z.object({
  success: z.boolean(),
  taskType: z.string(),
  key: z.string(),
  /** The answer: text, or the validated value of the answer schema. */
  result: z.unknown().optional(),
  error: MicrotaskErrorSchema.optional(),
  /** The task type's degraded answer, when it failed. */
  fallback: z.unknown().optional(),
  /** Measured, from start to end of this run (0 when served from the results store). */
  durationMs: z.number().nonnegative(),
  usage: UsageSchema,
  model: z.string().optional(),
  stopReason: z.string().optional(),
  requestId: z.string().optional(),
  /** True when the result was found under its key and no model was called. */
  cached: z.boolean(),
});
export type MicrotaskResult = z.infer<typeof MicrotaskResultSchema>;

/** The flow a microtask belongs to, for logs: its key starts with the flow's key (`<flowId>/module/auth/generate/0`). */
export const flowIdOf = (key: string) => key.split('/', 1)[0] ?? key;
