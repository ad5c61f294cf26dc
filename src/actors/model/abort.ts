import { ModelError } from './ModelError.js';

/**
 * A model call stopped by its AbortSignal: `timeout` when the signal's reason is a
 * TimeoutError (AbortSignal.timeout, the microtask deadline), `cancelled` otherwise.
 */
export function abortedError(signal: AbortSignal | undefined, cause?: unknown): ModelError {
  const reason = signal?.reason as { name?: string; message?: string } | undefined;
  if (reason?.name === 'TimeoutError') {
    return new ModelError('timeout', reason.message || 'the model call timed out', { cause });
  }
  return new ModelError('cancelled', 'the model call was cancelled', { cause });
}

/** Sleep that ends early, rejecting, when the signal aborts. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(abortedError(signal));
    const onAbort = () => {
      clearTimeout(timer);
      reject(abortedError(signal));
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}
