import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll } from 'vitest';
import { LmdbResultsStore } from '../../src/persistence/LmdbResultsStore.js';
import { LmdbStore, storageKey } from '../../src/persistence/LmdbStore.js';
import { runResultsStoreContract } from './resultsStoreContract.js';

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
