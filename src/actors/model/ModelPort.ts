import type { z } from 'zod';
import type { Usage } from '../../contracts/usage.js';

/**
 * One model call. Every implementation (Anthropic, scripted, cassette) takes this and
 * answers with a {@link ModelResponse} or rejects with a `ModelError`.
 */
export interface ModelRequest<T = string> {
  /** The role and rules of the microtask. */
  system: string;
  /** The one focused thing to do. */
  prompt: string;
  /** Structured input, sent as JSON after the prompt. */
  data?: unknown;
  /**
   * A structured answer: the model must give a value of this schema (forced tool use),
   * validated by zod. Without it the answer is the model's text.
   */
  schema?: z.ZodType<T>;
  /** Name of the answer tool the model is forced to call; `answer` by default. */
  schemaName?: string;
  /** Aborting it cancels the HTTP request itself. */
  signal?: AbortSignal;
  maxTokens?: number;
  /** Overrides the implementation's default model for this call. */
  model?: string;
}

export interface ModelResponse<T = string> {
  /** The validated value when a schema was given; the text otherwise. */
  value: T;
  /** The raw text of the answer (for a structured answer, its JSON). */
  text: string;
  /** Summed over every HTTP call this answer took (a repair attempt costs a call). */
  usage: Usage;
  model: string;
  stopReason: string;
  requestId: string | undefined;
}

export interface ModelPort {
  /** Shown in logs and results: `anthropic`, `scripted`, `cassette`. */
  readonly name: string;
  call<T = string>(request: ModelRequest<T>): Promise<ModelResponse<T>>;
}
