import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll } from 'vitest';
import { FileResultsStore } from '../../src/persistence/FileResultsStore.js';
import { legacyResultFile } from '../../src/persistence/LogResultsStore.js';
import { runResultsStoreContract } from './resultsStoreContract.js';

const dirs: string[] = [];
afterAll(async () => {
  await Promise.all(dirs.splice(0).map((d) => rm(d, { recursive: true, force: true })));
});

runResultsStoreContract('FileResultsStore', async () => {
  const dir = join(await mkdtemp(join(tmpdir(), 'microtask-fileresults-')), 'results');
  dirs.push(dir);
  const other = async () => new FileResultsStore(dir);
  return {
    store: new FileResultsStore(dir),
    second: other,
    afterCrash: other,
    corrupt: async (key, raw) => {
      await mkdir(dir, { recursive: true });
      await writeFile(legacyResultFile(dir, key), raw);
    },
    close: async () => {},
  };
});
