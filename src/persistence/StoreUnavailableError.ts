import { scrubSecrets } from '../secrets.js';

/**
 * A store (snapshots, microtask results) that stays unavailable after retries: a full
 * disk, a nats-server that does not come back within the deadline. This is never a model
 * failure: the flow stops where it stands, its last saved step intact, to be resumed once
 * the store is back; it does not fall back, and a paid answer is never swapped for a
 * fallback because it could not be stored.
 */
export class StoreUnavailableError extends Error {
  override readonly name = 'StoreUnavailableError';
  readonly code = 'STORE_UNAVAILABLE';
  constructor(message: string, options?: { cause?: unknown }) {
    // Made from a store's or a client library's message (a NATS error may quote a
    // credential), and kept in the flow's record, answered and logged: scrubbed as made.
    super(scrubSecrets(message), options);
  }
}

/** By name as well as class: an error may cross a module or realm boundary (a worker thread, a bundled copy). */
export const isStoreUnavailable = (e: unknown): e is StoreUnavailableError =>
  e instanceof StoreUnavailableError || (e instanceof Error && e.name === 'StoreUnavailableError');

/**
 * One line for a person, naming the cause and where: `ENOSPC: no space left on /data/flows`.
 * Node's own messages say "no space left on device, write" with no path worth acting on.
 */
export function describeStoreError(e: unknown, where: string): string {
  const code = (e as { code?: unknown } | undefined)?.code;
  switch (code) {
    case 'ENOSPC':
      return `ENOSPC: no space left on ${where}`;
    case 'EDQUOT':
      return `EDQUOT: disk quota exceeded on ${where}`;
    case 'EROFS':
      return `EROFS: ${where} is on a read-only file system`;
    case 'EACCES':
    case 'EPERM':
      return `${code}: no permission to write to ${where}`;
    default:
      return `${typeof code === 'string' ? `${code}: ` : ''}could not write to ${where}: ${e instanceof Error ? e.message.split('\n')[0] : String(e)}`;
  }
}
