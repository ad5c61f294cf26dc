import type { MicrotaskResult } from './microtaskTypes.js';

/**
 * Finished microtask results by idempotency key. A result is stored before the flow is
 * told of it, so a flow restored after a crash finds it instead of paying for the call
 * again. In memory here; NATS KV when the bus is NATS.
 */
export interface ResultsStore {
  get(key: string): Promise<MicrotaskResult | undefined>;
  put(key: string, result: MicrotaskResult): Promise<void>;
}

export class MemoryResultsStore implements ResultsStore {
  private readonly results = new Map<string, MicrotaskResult>();

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
