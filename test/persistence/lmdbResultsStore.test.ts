import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { LmdbResultsStore } from '../../src/persistence/LmdbResultsStore.js';
import { legacyResultFile, LogResultsStore, ResultsStoreError } from '../../src/persistence/LogResultsStore.js';
import { LmdbStore, storageKey } from '../../src/persistence/LmdbStore.js';
import { runResultsStoreContract, storedResult } from './resultsStoreContract.js';

const dirs: string[] = [];
async function tempDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'microtask-lmdb-results-'));
  dirs.push(dir);
  return join(dir, 'state');
}
afterAll(async () => {
  await Promise.all(dirs.splice(0).map((d) => rm(d, { recursive: true, force: true })));
});

runResultsStoreContract('LmdbResultsStore', async () => {
  const dir = await tempDir();
  const handles = [await LmdbStore.open(dir)];
  const another = async () => {
    const handle = await LmdbStore.open(dir);
    handles.push(handle);
    return LmdbResultsStore.open(handle);
  };
  return {
    store: await LmdbResultsStore.open(handles[0]!),
    second: another,
    afterCrash: another,
    corrupt: async (key, raw) => void (await handles[0]!.dbs.results.put(storageKey(key), raw, Date.now())),
    close: async () => {
      for (const handle of handles) await handle.close();
    },
  };
});

const opened: LmdbStore[] = [];
afterEach(async () => {
  for (const db of opened.splice(0)) await db.close();
});
async function openDb(stateDir: string) {
  const db = await LmdbStore.open(stateDir);
  opened.push(db);
  return db;
}

describe('LmdbResultsStore', () => {
  it('reads the results of earlier versions (daily logs, one-file results) on a miss; a newer result wins', async () => {
    const stateDir = await tempDir();
    const dir = join(stateDir, 'results');
    const log = new LogResultsStore(dir);
    await log.put('old/log/0', storedResult('old/log/0'));
    await log.put('old/both/0', storedResult('old/both/0', { taskType: 'old' }));
    await log.close();
    await writeFile(legacyResultFile(dir, 'old/file/0'), JSON.stringify(storedResult('old/file/0')));
    const store = await LmdbResultsStore.open(await openDb(stateDir));
    expect(await store.get('old/log/0')).toEqual(storedResult('old/log/0'));
    expect(await store.get('old/file/0')).toEqual(storedResult('old/file/0'));
    expect(await store.get('old/none/0')).toBeUndefined();
    await store.put('old/both/0', storedResult('old/both/0', { taskType: 'new' }));
    expect(await store.get('old/both/0')).toEqual(storedResult('old/both/0', { taskType: 'new' }));
  });

  it('prune deletes the results put before the limit, keeps one put again since, and deletes the old files of earlier versions', async () => {
    const stateDir = await tempDir();
    const dir = join(stateDir, 'results');
    const day = (d: number) => Date.UTC(2026, 2, d, 12);
    // Earlier versions' segments of the 1st and the 4th.
    for (const d of [1, 4]) {
      const log = new LogResultsStore(dir, { now: () => new Date(day(d)) });
      await log.put(`log/${d}`, storedResult(`log/${d}`));
      await log.close();
    }
    let now = day(1);
    const store = await LmdbResultsStore.open(await openDb(stateDir), { now: () => now });
    await store.put('k/1', storedResult('k/1'));
    await store.put('k/again', storedResult('k/again'));
    now = day(2);
    await store.put('k/2', storedResult('k/2'));
    now = day(4);
    await store.put('k/again', storedResult('k/again', { taskType: 'later' }));
    await store.put('k/4', storedResult('k/4'));

    // Results of the 1st and the 2nd (k/again's first put does not count: it was put again), and the 1st's segment.
    expect(await store.prune(new Date(day(3)))).toBe(2 + 1);
    expect(await store.get('k/1')).toBeUndefined();
    expect(await store.get('k/2')).toBeUndefined();
    expect(await store.get('log/1')).toBeUndefined();
    expect(await store.get('k/again')).toEqual(storedResult('k/again', { taskType: 'later' }));
    expect(await store.get('k/4')).toEqual(storedResult('k/4'));
    expect(await store.get('log/4')).toEqual(storedResult('log/4'));
    expect(await store.prune(new Date(day(3)))).toBe(0);
    expect(await store.prune(new Date(day(5)))).toBe(2 + 1);
    expect(await store.get('k/again')).toBeUndefined();
  });

  it('keeps results under keys of any length and content, each its own', async () => {
    const store = await LmdbResultsStore.open(await openDb(await tempDir()));
    const keys = [`a/${'x'.repeat(3000)}`, `a/${'x'.repeat(3000)}y`, 'with\0nul', 'with\0nul2', `=${'é'.repeat(600)}`];
    for (const key of keys) await store.put(key, storedResult(key));
    for (const key of keys) expect(await store.get(key)).toEqual(storedResult(key));
    expect(storageKey(keys[0]!)).toMatch(/^#[0-9a-f]{64}$/);
  });

  it('fails with RESULTS_WRITE_FAILED and the database when it cannot write (its handle closed: at once, not never)', async () => {
    const db = await LmdbStore.open(await tempDir());
    const store = await LmdbResultsStore.open(db);
    await db.close();
    const error = await store.put('k/1', storedResult('k/1')).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ResultsStoreError);
    expect(error).toMatchObject({ code: 'RESULTS_WRITE_FAILED', message: expect.stringContaining(db.path), cause: { code: 'DB_CLOSED' } });
    expect(await store.get('k/1').catch((e: unknown) => e)).toMatchObject({ code: 'RESULTS_READ_FAILED' });
    expect(await store.prune(new Date()).catch((e: unknown) => e)).toMatchObject({ code: 'RESULTS_PRUNE_FAILED' });
  });
});
