import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { ResultsStore } from '../../src/actors/ResultsStore.js';
import { failedResult, storedResult } from './resultsFixtures.js';

export { failedResult, storedResult };

/**
 * The ResultsStore contract, run against every implementation (Hono-style shared suite):
 * each implementation's test file calls `runResultsStoreContract` with a factory that makes
 * an empty store. A store in memory (`inMemory`) has no storage to share: the cases of a
 * second instance, a restart and a raw write are not defined for it.
 */
export interface ResultsStoreUnderTest {
  store: ResultsStore;
  /** Another instance over the same storage, as another process has. */
  second?: () => Promise<ResultsStore>;
  /** A new instance over the same storage after a crash: the first one is not closed. */
  afterCrash?: () => Promise<ResultsStore>;
  /** Writes `raw` (text) as what the storage holds for `key`, bypassing `put`. */
  corrupt?: (key: string, raw: string) => Promise<void>;
  close(): Promise<void>;
}

/** Idempotency keys of every form the flows make, and odd ones a store must not mix up. */
export const oddKeys = [
  'flow-1/module/auth/generate/0',
  'flow-1/module/auth/generate/1',
  'flow-1/parallel/items.2/verify/0',
  'with space and ünïcödé ✓',
  'dots..and/../slashes/',
  '*',
  '>',
  `long/${'x'.repeat(400)}`,
];

export function runResultsStoreContract(
  name: string,
  make: () => Promise<ResultsStoreUnderTest>,
  options: { inMemory?: boolean } = {},
): void {
  // A store in memory has no storage a second instance, a restart or a raw write could share.
  const withStorage = options.inMemory ? () => undefined : it;
  describe(`ResultsStore contract: ${name}`, () => {
    let underTest: ResultsStoreUnderTest;
    let store: ResultsStore;

    beforeEach(async () => {
      underTest = await make();
      store = underTest.store;
    });
    afterEach(async () => {
      await underTest.close();
    });

    it('gives nothing for a key never put', async () => {
      expect(await store.get('flow-none/generate/0')).toBeUndefined();
      for (const key of oddKeys) expect(await store.get(key)).toBeUndefined();
    });

    it('gives back what was put (deep equal), under each key its own', async () => {
      for (const key of oddKeys) await store.put(key, storedResult(key));
      for (const key of oddKeys) expect(await store.get(key)).toEqual(storedResult(key));
      expect(await store.get('flow-1/module/auth/generate/2')).toBeUndefined();
    });

    withStorage('gives what one instance put to another over the same storage (another process)', async () => {
      const other = await underTest.second!();
      // Asked before the put: the other instance must not keep answering "missing".
      expect(await other.get('flow-2/generate/0')).toBeUndefined();
      await store.put('flow-2/generate/0', storedResult('flow-2/generate/0'));
      expect(await other.get('flow-2/generate/0')).toEqual(storedResult('flow-2/generate/0'));
      await other.put('flow-2/verify/0', storedResult('flow-2/verify/0', { taskType: 'verify' }));
      expect(await store.get('flow-2/verify/0')).toEqual(storedResult('flow-2/verify/0', { taskType: 'verify' }));
    });

    it('replaces a result when the same key is put again (a stored failure, then the run that succeeded)', async () => {
      const key = 'flow-3/generate/0';
      await store.put(key, failedResult(key));
      expect(await store.get(key)).toEqual(failedResult(key));
      await store.put(key, storedResult(key));
      expect(await store.get(key)).toEqual(storedResult(key));
      if (underTest.second) expect(await (await underTest.second()).get(key)).toEqual(storedResult(key));
    });

    it('keeps every one of many concurrent puts of different keys', async () => {
      const keys = Array.from({ length: 200 }, (_, i) => `flow-4/item-${i}/generate/0`);
      await Promise.all(keys.map((key) => store.put(key, storedResult(key, { durationMs: keys.indexOf(key) }))));
      const readers = [store, ...(underTest.second ? [await underTest.second()] : [])];
      for (const reader of readers) {
        const got = await Promise.all(keys.map((key) => reader.get(key)));
        expect(got).toEqual(keys.map((key, i) => storedResult(key, { durationMs: i })));
      }
    });

    withStorage('keeps what a put resolved after a crash (a new instance, the old one never closed)', async () => {
      const keys = Array.from({ length: 50 }, (_, i) => `flow-5/item-${i}/generate/0`);
      await Promise.all(keys.map((key) => store.put(key, storedResult(key))));
      await store.put(keys[0]!, storedResult(keys[0]!, { taskType: 'replaced' }));
      const restarted = await underTest.afterCrash!();
      expect(await restarted.get(keys[0]!)).toEqual(storedResult(keys[0]!, { taskType: 'replaced' }));
      for (const key of keys.slice(1)) expect(await restarted.get(key)).toEqual(storedResult(key));
    });

    (options.inMemory ? () => undefined : describe)('a stored result that is not a valid result of its key is as good as none (the task runs again)', () => {
      for (const [kind, raw] of [
        ['bad JSON', '{"success": true, "taskType": "gen'],
        ['valid JSON of the wrong shape', '{"hello": "world"}'],
        ['a JSON array', '[1, 2, 3]'],
      ] as const) {
        withStorage(kind, async () => {
          await store.put('flow-6/good/0', storedResult('flow-6/good/0'));
          await underTest.corrupt!('flow-6/bad/0', raw);
          expect(await store.get('flow-6/bad/0')).toBeUndefined();
          expect(await store.get('flow-6/good/0')).toEqual(storedResult('flow-6/good/0'));
          // And the task's next result is stored as usual.
          await store.put('flow-6/bad/0', storedResult('flow-6/bad/0'));
          expect(await store.get('flow-6/bad/0')).toEqual(storedResult('flow-6/bad/0'));
        });
      }

      withStorage('a valid result of another key', async () => {
        await underTest.corrupt!('flow-7/generate/0', JSON.stringify(storedResult('flow-7/other/0')));
        expect(await store.get('flow-7/generate/0')).toBeUndefined();
      });
    });
  });
}
