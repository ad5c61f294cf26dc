import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll } from 'vitest';
import { LmdbSnapshotStore } from '../../src/persistence/LmdbSnapshotStore.js';
import { LmdbStore } from '../../src/persistence/LmdbStore.js';
import { runSnapshotStoreContract } from './contract.js';

const dirs: string[] = [];
async function tempDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'microtask-lmdb-'));
  dirs.push(dir);
  // The store makes its directory itself: give it one that does not exist yet.
  return join(dir, 'state');
}
afterAll(async () => {
  await Promise.all(dirs.splice(0).map((d) => rm(d, { recursive: true, force: true })));
});

runSnapshotStoreContract('LmdbSnapshotStore', async (options) => {
  const dir = await tempDir();
  const handles = [await LmdbStore.open(dir)];
  const { flows } = handles[0]!.dbs;
  return {
    store: await LmdbSnapshotStore.open(handles[0]!, options),
    // As another writer of the database would: the next version, the raw text.
    corrupt: async (flowId, raw) => void (await flows.put(flowId, raw, (flows.getEntry(flowId)?.version ?? 0) + 1)),
    // Another daemon of this process: its own handle on the same environment.
    second: async () => {
      const other = await LmdbStore.open(dir);
      handles.push(other);
      return LmdbSnapshotStore.open(other, options);
    },
    close: async () => {
      for (const handle of handles) await handle.close();
    },
  };
});
