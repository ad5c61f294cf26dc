import { MicrotaskResultSchema, type MicrotaskResult } from '../contracts/microtask.js';
import type { ResultsStore } from '../actors/ResultsStore.js';
import type { KeyValueStore } from './Bus.js';
import { resultKey } from './resultKey.js';

/** Microtask results in a KV bucket, shared by the daemon and every worker. */
export class KvResultsStore implements ResultsStore {
  constructor(
    private readonly kv: KeyValueStore,
    /** For messages: which bucket, on which server. */
    readonly location = 'the results bucket on NATS',
  ) {}

  async get(key: string): Promise<MicrotaskResult | undefined> {
    const entry = await this.kv.get(resultKey(key));
    if (!entry) return undefined;
    // A result that does not parse is as good as none: the task runs again.
    let json: unknown;
    try {
      json = entry.json();
    } catch {
      return undefined;
    }
    const parsed = MicrotaskResultSchema.safeParse(json);
    // Long keys are stored under their hash: a result of another key is none of this one's.
    return parsed.success && parsed.data.key === key ? parsed.data : undefined;
  }

  async put(key: string, result: MicrotaskResult): Promise<void> {
    await this.kv.put(resultKey(key), JSON.stringify(result));
  }
}
