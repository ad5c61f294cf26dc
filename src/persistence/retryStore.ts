/**
 * Retries a store operation (a put, a get, an enqueue on the bus) with exponential backoff
 * and jitter until it succeeds or `until` (epoch ms) has passed: a nats-server restarting
 * or a disk being freed comes back within seconds, and a store failure must not become a
 * model failure. Rejects with the last error once no attempt is left (the caller turns it
 * into a StoreUnavailableError with what it was doing), or with the signal's reason when
 * it aborts first.
 *
 * The first attempt costs no timer: the common case (the store answers) stays as cheap
 * as a plain call.
 */
export interface RetryStoreOptions {
  /** No attempt starts after this (epoch ms); the attempt in flight then is the last. */
  until: number;
  signal?: AbortSignal;
  /** Called after each failed attempt that will be followed by another, e.g. to log the first. */
  onRetry?: (error: unknown, attempt: number, delayMs: number) => void;
  /** The first backoff; it doubles up to `maxDelayMs`. Defaults: 100 ms and 2 s. */
  baseDelayMs?: number;
  maxDelayMs?: number;
}

export async function retryStore<T>(operation: () => Promise<T>, options: RetryStoreOptions): Promise<T> {
  const base = options.baseDelayMs ?? 100;
  const max = options.maxDelayMs ?? 2_000;
  for (let attempt = 1; ; attempt++) {
    try {
      return await operation();
    } catch (e) {
      if (options.signal?.aborted) throw options.signal.reason;
      const left = options.until - Date.now();
      if (left <= 0) throw e;
      // Equal jitter: half the backoff, plus up to as much again at random, so the many
      // runs a restart failed at once do not come back all in the same instant.
      const backoff = Math.min(max, base * 2 ** (attempt - 1));
      const delayMs = Math.min(left, backoff / 2 + Math.random() * (backoff / 2));
      options.onRetry?.(e, attempt, delayMs);
      await sleep(delayMs, options.signal);
    }
  }
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  if (signal?.aborted) return Promise.reject(signal.reason);
  return new Promise((resolve, reject) => {
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal!.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/**
 * The error a store failure comes down to, for a message: the file system's (which has
 * the errno code, ENOSPC) under a store's own wrapper, or the error itself.
 */
export function rootStoreError(e: unknown): unknown {
  let current: unknown = e;
  for (let depth = 0; depth < 5 && current instanceof Error; depth++) {
    const code = (current as { code?: unknown }).code;
    if (typeof code === 'string' && /^E[A-Z0-9]+$/.test(code)) return current;
    current = current.cause;
  }
  return e;
}

/** One line of an error, for a message that must stay on one line. */
export const firstLine = (e: unknown): string => (e instanceof Error ? e.message : String(e)).split('\n', 1)[0]!;
