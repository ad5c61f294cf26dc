import type { ModelError, ModelErrorKind } from './model/ModelError.js';

/**
 * Stops a runner from calling a model that just proved unreachable: after a refused key
 * (`auth`) every later call fails at once, for good; after the server was unavailable or
 * rate limited (retries already spent), later calls fail at once until a cooldown (or the
 * server's retry-after) has passed. A flow that cannot reach its model then falls back
 * in seconds instead of paying the retry waits of every step.
 */
export class CircuitBreaker {
  private open: { kind: ModelErrorKind; message: string; until: number; retryable: boolean } | undefined;

  constructor(
    private readonly cooldownMs = 15_000,
    private readonly now: () => number = Date.now,
  ) {}

  /** The failure to answer with instead of calling, while the circuit is open. */
  check(): { kind: ModelErrorKind; message: string; retryable: boolean } | undefined {
    if (!this.open) return undefined;
    if (this.now() >= this.open.until) {
      this.open = undefined;
      return undefined;
    }
    return { kind: this.open.kind, message: `not tried: ${this.open.message}`, retryable: this.open.retryable };
  }

  record(error: ModelError): void {
    if (error.kind === 'auth') {
      this.open = { kind: 'auth', message: error.message, until: Number.POSITIVE_INFINITY, retryable: false };
    } else if (error.kind === 'unavailable' || error.kind === 'rate_limited') {
      const wait = error.retryAfterMs ?? this.cooldownMs;
      this.open = { kind: error.kind, message: `${error.message} (the model failed this way less than ${Math.ceil(wait / 1000)} s ago)`, until: this.now() + wait, retryable: true };
    }
  }

  /** A call succeeded: the model is reachable again. */
  reset(): void {
    if (this.open?.kind !== 'auth') this.open = undefined;
  }
}
