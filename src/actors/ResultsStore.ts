import { StoreUnavailableError } from '../persistence/StoreUnavailableError.js';
import { zeroUsage, type Usage } from '../contracts/usage.js';
import type { MicrotaskResult } from '../contracts/microtask.js';

/**
 * Finished microtask results by idempotency key. A result is stored before the flow is
 * told of it, so a flow restored after a crash finds it instead of paying for the call
 * again. In memory here; NATS KV when the bus is NATS; a log on disk embedded.
 */
export interface ResultsStore {
  get(key: string): Promise<MicrotaskResult | undefined>;
  put(key: string, result: MicrotaskResult): Promise<void>;
  /**
   * Queues the write of `result` now, before returning, and resolves once it is on disk
   * (rejects as `put` does). Where a store has it, its writes land in the order they are
   * queued: this one no later than any write queued after it to the same database, a
   * flow's next save included (lmdb: one write queue, the composition root's database).
   * Undefined when it cannot queue the write now (use `put`).
   */
  queue?(key: string, result: MicrotaskResult): Promise<void> | undefined;
  /** Where the results are kept (a directory, a bucket), for messages a person acts on. */
  readonly location?: string;
}

/**
 * The results store stayed unavailable (after retries) while a microtask needed it: its
 * flow stops where it stands, resumable, and does not fall back. `usage` holds the tokens
 * the microtask spent (a paid answer that could not be stored), for the host to count
 * and log; that answer is kept in the process's memory, so a later run of `key` here
 * returns it without paying again.
 */
export class ResultsUnavailableError extends StoreUnavailableError {
  readonly key: string;
  readonly usage: Usage;
  constructor(message: string, options: { key: string; usage?: Usage; cause?: unknown }) {
    super(message, { cause: options.cause });
    this.key = options.key;
    this.usage = options.usage ?? zeroUsage();
  }
}

export class MemoryResultsStore implements ResultsStore {
  private readonly results = new Map<string, MicrotaskResult>();
  readonly location = 'memory';

  async get(key: string): Promise<MicrotaskResult | undefined> {
    return this.results.get(key);
  }

  async put(key: string, result: MicrotaskResult): Promise<void> {
    this.results.set(key, result);
  }

  get size(): number {
    return this.results.size;
  }
}
