import { scrubSecrets } from '../../secrets.js';
import type { Usage } from '../../contracts/usage.js';

/**
 * Why a model call failed. A program switches on `kind`; `retryable` says whether the
 * same request could succeed later (rate limit, overload, network) or never will
 * (bad request, refusal, an answer that does not fit the schema).
 */
export type ModelErrorKind =
  | 'timeout' // the microtask's deadline passed; the HTTP request was aborted
  | 'cancelled' // the caller aborted (actor stopped, flow cancelled)
  | 'rate_limited' // 429, retries exhausted or retry-after beyond the cap
  | 'unavailable' // 5xx, 529 overloaded, connection refused or reset
  | 'invalid_request' // 400, 404, 413, 422: the request itself is wrong
  | 'auth' // 401, 403: key missing, wrong or without permission
  | 'billing' // 402, or 400 "credit balance is too low": the account cannot pay for calls
  | 'model_not_found' // 404 not_found_error naming the model: no such model (or none for this key)
  | 'invalid_output' // the answer does not validate against the schema, even after repair
  | 'refused' // stop_reason refusal
  | 'max_tokens' // stop_reason max_tokens: the answer was cut off
  | 'cassette_miss' // replay found no recorded answer for the request
  | 'unknown';

const retryableKinds: ReadonlySet<ModelErrorKind> = new Set(['rate_limited', 'unavailable']);

/**
 * Kinds no later call, retry or fallback helps: every call with this key, account or model
 * fails the same way until a person fixes it. The flow that meets one stops at once.
 */
export const permanentKinds: ReadonlySet<ModelErrorKind> = new Set(['auth', 'billing', 'model_not_found']);

export interface ModelErrorDetails {
  status?: number;
  requestId?: string;
  retryAfterMs?: number;
  /** Tokens already spent on the failed call (a cut-off or invalid answer was paid for). */
  usage?: Usage;
  cause?: unknown;
}

/**
 * A failed model call. Its message is scrubbed of secrets when it is made (a server may
 * quote the key back in a 401): it travels into results, snapshots, journals, the bus,
 * `flow.get`, logs and CLI output, and none of them may hold a key.
 */
export class ModelError extends Error {
  override readonly name = 'ModelError';
  readonly kind: ModelErrorKind;
  readonly retryable: boolean;
  /** A cause no retry or fallback helps (see {@link permanentKinds}): its flow stops. */
  readonly permanent: boolean;
  readonly status: number | undefined;
  readonly requestId: string | undefined;
  /** What the server asked us to wait before trying again, when it said. */
  readonly retryAfterMs: number | undefined;
  readonly usage: Usage | undefined;

  constructor(kind: ModelErrorKind, message: string, details: ModelErrorDetails = {}) {
    super(scrubSecrets(message), details.cause === undefined ? undefined : { cause: details.cause });
    this.kind = kind;
    this.retryable = retryableKinds.has(kind);
    this.permanent = permanentKinds.has(kind);
    this.status = details.status;
    this.requestId = details.requestId === undefined ? undefined : scrubSecrets(details.requestId);
    this.retryAfterMs = details.retryAfterMs;
    this.usage = details.usage;
  }
}

export const isModelError = (e: unknown): e is ModelError => e instanceof ModelError;
