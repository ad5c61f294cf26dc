/**
 * Thrown by an actor when its flow cannot go on at all: the model refused the API key, the
 * account has no credit, the model does not exist. Every later call would fail the same
 * way, so no fallback or retry helps; the flow host ends the flow `failed` at once with
 * this cause (its code and one line), before any machine sees the error and falls back.
 */
export class FlowStopError extends Error {
  override readonly name = 'FlowStopError';
  constructor(
    /** MODEL_AUTH, MODEL_BILLING, MODEL_NOT_FOUND, ...: what a program switches on. */
    readonly code: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** A FlowStopError, also one that crossed a realm or a serialization (name and code kept). */
export const isFlowStop = (e: unknown): e is FlowStopError =>
  e instanceof FlowStopError || (e instanceof Error && e.name === 'FlowStopError' && typeof (e as { code?: unknown }).code === 'string');
