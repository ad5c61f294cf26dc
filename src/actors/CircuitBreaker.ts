import type { ModelError, ModelErrorKind } from './model/ModelError.js';

/**
 * The longest a server's retry-after is taken as is: the breaker's default cooldown and
 * cap, and the longest a worker's queue waits before delivering a rate-limited task again.
 * Past it, one call finds out whether the server is back: a wrong guess costs one call,
 * while an hour-long retry-after taken as is failed every call for an hour.
 */
export const MAX_RETRY_AFTER_MS = 15_000;

export interface CircuitBreakerOptions {
  /** How long the circuit stays open after a transient failure the server gave no retry-after for. */
  cooldownMs?: number;
  /**
   * The longest it stays open, whatever retry-after the server asked for; the cooldown by
   * default. Past it a single probe finds out whether the server is back, so a wrong
   * guess costs one call, while an hour-long retry-after taken as is failed every call
   * for an hour without a single one let through.
   */
  maxOpenMs?: number;
  /**
   * How long a probe holds its slot when its end is never reported (the caller neither
   * reset nor recorded: a bug, a crash of the caller's code); then another call may probe.
   */
  probeLeaseMs?: number;
  now?: () => number;
}

/** The failure a caller answers with instead of calling, while the circuit is open. */
export interface Tripped {
  kind: ModelErrorKind;
  message: string;
  retryable: boolean;
  /** When the circuit will let a call through again, while it is open (not while a probe runs). */
  retryAfterMs?: number;
}

interface Open {
  kind: ModelErrorKind;
  message: string;
  retryable: boolean;
  /** How long it was opened for, to say how recent the failure is. */
  openMs: number;
  /** Until then every call fails at once; after it, half-open: one probe at a time. */
  until: number;
  /** While a probe is under way: when its slot is freed if nobody reports its end. */
  probeUntil?: number;
}

/** Failures that say nothing about the server's health: the call was stopped on our side. */
const inconclusive: ReadonlySet<ModelErrorKind> = new Set(['cancelled', 'timeout', 'unknown', 'cassette_miss']);

/**
 * Stops a runner from calling a model that just proved unreachable: after a refused key
 * (`auth`) every later call fails at once, for good; after the server was unavailable or
 * rate limited (retries already spent), later calls fail at once for the cooldown (or the
 * server's retry-after, up to `maxOpenMs`). Then the circuit is half-open: exactly one call
 * (the probe) goes through and the others still fail fast; the probe's success closes the
 * circuit, its failure opens it again. A flow that cannot reach its model falls back in
 * seconds instead of paying the retry waits of every step, and a model that is back is
 * found by one call.
 *
 * The caller's protocol: `check()` before the call (a pass in the half-open state takes
 * the probe slot), then `reset()` on success or `record(error)` on a ModelError. A probe
 * stopped on our side (cancelled, timed out) frees its slot; a probe never reported frees
 * it after `probeLeaseMs`.
 */
export class CircuitBreaker {
  private open: Open | undefined;
  private readonly cooldownMs: number;
  private readonly maxOpenMs: number;
  private readonly probeLeaseMs: number;
  private readonly now: () => number;

  constructor(options: number | CircuitBreakerOptions = {}, now: () => number = Date.now) {
    const given = typeof options === 'number' ? { cooldownMs: options, now } : options;
    this.cooldownMs = given.cooldownMs ?? MAX_RETRY_AFTER_MS;
    this.maxOpenMs = given.maxOpenMs ?? this.cooldownMs;
    this.probeLeaseMs = given.probeLeaseMs ?? 60_000;
    this.now = given.now ?? now;
  }

  /**
   * The failure to answer with instead of calling, or undefined to go ahead. In the
   * half-open state, going ahead means being the probe: report its end.
   */
  check(): Tripped | undefined {
    const open = this.open;
    if (!open) return undefined;
    const now = this.now();
    const failFast = { kind: open.kind, retryable: open.retryable };
    if (open.until === Number.POSITIVE_INFINITY) return { ...failFast, message: `not tried: ${open.message}` };
    if (now < open.until) {
      return {
        ...failFast,
        message: `not tried: ${open.message} (the model failed this way less than ${Math.max(1, Math.ceil(open.openMs / 1000))} s ago)`,
        retryAfterMs: open.until - now,
      };
    }
    if (open.probeUntil !== undefined && now < open.probeUntil) {
      return { ...failFast, message: `not tried: ${open.message}; a probe call is finding out whether the model is back` };
    }
    open.probeUntil = now + this.probeLeaseMs;
    return undefined;
  }

  record(error: ModelError): void {
    if (error.kind === 'auth') {
      this.open = { kind: 'auth', message: error.message, until: Number.POSITIVE_INFINITY, openMs: Number.POSITIVE_INFINITY, retryable: false };
    } else if (error.kind === 'unavailable' || error.kind === 'rate_limited') {
      const wait = Math.min(error.retryAfterMs ?? this.cooldownMs, this.maxOpenMs);
      this.open = { kind: error.kind, message: error.message, until: this.now() + wait, openMs: wait, retryable: true };
    } else if (inconclusive.has(error.kind)) {
      // Stopped on our side: the server's health is still unknown, so the next call probes.
      if (this.open) this.open.probeUntil = undefined;
    } else {
      // The server answered (a bad request, an invalid or refused answer): it is reachable.
      this.reset();
    }
  }

  /** A call succeeded: the model is reachable again. */
  reset(): void {
    if (this.open?.kind !== 'auth') this.open = undefined;
  }
}
