import { mkdir, mkdtemp, readdir, readFile, rm, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { FileSnapshotStore } from '../../src/persistence/FileSnapshotStore.js';
import { flowRecord, runSnapshotStoreContract } from './contract.js';

const dirs: string[] = [];
async function tempDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'microtask-snapshots-'));
  dirs.push(dir);
  // The store makes its directory itself: give it one that does not exist yet.
  return join(dir, 'flows');
}

runSnapshotStoreContract('FileSnapshotStore', async (options) => {
  const dir = await tempDir();
  return {
    store: new FileSnapshotStore(dir, options),
    corrupt: async (flowId, raw) => {
      await mkdir(dir, { recursive: true });
      await writeFile(join(dir, `${flowId}.json`), raw);
    },
    close: async () => {},
  };
});

afterAll(async () => {
  await Promise.all(dirs.splice(0).map((d) => rm(d, { recursive: true, force: true })));
});

describe('FileSnapshotStore on disk', () => {
  it('writes <flowId>.json as {revision, record} and leaves no temp file behind', async () => {
    const dir = await tempDir();
    const store = new FileSnapshotStore(dir);
    const record = flowRecord('flow-1');
    const first = await store.save(record, null);
    await store.save(flowRecord('flow-1', { state: 'next' }), first);
    expect(await readdir(dir)).toEqual(['flow-1.json']);
    expect(JSON.parse(await readFile(join(dir, 'flow-1.json'), 'utf8'))).toEqual({ revision: 2, record: flowRecord('flow-1', { state: 'next' }) });
  });

  it('a save that died before its rename leaves the old record readable; open() later removes its temp file', async () => {
    const dir = await tempDir();
    const store = await FileSnapshotStore.open(dir);
    const revision = await store.save(flowRecord('flow-1'), null);
    // What a save killed between write and rename leaves: a half-written temp file.
    const temp = join(dir, '.flow-1.json.4242.0123456789ab.tmp');
    await writeFile(temp, '{"revision": 2, "record": {"flowId": "flow-1", "pat');

    const reported: string[] = [];
    const restarted = new FileSnapshotStore(dir, { onCorrupt: (e) => void reported.push(e.flowId) });
    expect(await restarted.load('flow-1')).toEqual({ record: flowRecord('flow-1'), revision });
    expect((await restarted.list()).map((s) => s.flowId)).toEqual(['flow-1']);
    expect(reported).toEqual([]);
    const next = await restarted.save(flowRecord('flow-1', { state: 'resumed' }), revision);
    expect(next).toBe(revision + 1);

    // A fresh temp file might be a save in flight (another process): open() keeps it.
    await FileSnapshotStore.open(dir);
    expect((await readdir(dir)).sort()).toEqual(['.flow-1.json.4242.0123456789ab.tmp', 'flow-1.json']);
    const old = new Date(Date.now() - 120_000);
    await utimes(temp, old, old);
    await FileSnapshotStore.open(dir);
    expect(await readdir(dir)).toEqual(['flow-1.json']);
  });

  it('moveAside keeps the file under corrupt/ with the reason beside it', async () => {
    const dir = await tempDir();
    const store = new FileSnapshotStore(dir);
    await store.save(flowRecord('flow-1'), null);
    await writeFile(join(dir, 'flow-1.json'), '{"torn');
    await store.moveAside('flow-1', 'not JSON (Unterminated string)');

    expect(await readdir(dir)).toEqual(['corrupt']);
    const aside = (await readdir(join(dir, 'corrupt'))).sort();
    expect(aside).toHaveLength(2);
    expect(aside[0]).toMatch(/^flow-1\.\d{4}-\d\d-\d\dT\d\d-\d\d-\d\d\.\d{3}Z\.json$/);
    expect(aside[1]).toBe(aside[0]!.replace(/\.json$/, '.reason.txt'));
    expect(await readFile(join(dir, 'corrupt', aside[0]!), 'utf8')).toBe('{"torn');
    expect(await readFile(join(dir, 'corrupt', aside[1]!), 'utf8')).toBe('not JSON (Unterminated string)\n');
    expect(await store.list()).toEqual([]);
  });

  it('a save over a file whose revision cannot be read rejects SNAPSHOT_CORRUPT; one whose record alone is bad is overwritten at its revision', async () => {
    const dir = await tempDir();
    const store = new FileSnapshotStore(dir);
    await store.save(flowRecord('flow-1'), null);
    await writeFile(join(dir, 'flow-1.json'), 'garbage');
    await expect(store.save(flowRecord('flow-1'), 1)).rejects.toMatchObject({ code: 'SNAPSHOT_CORRUPT' });
    await writeFile(join(dir, 'flow-1.json'), JSON.stringify({ revision: 7, record: { flowId: 'flow-1' } }));
    await expect(store.load('flow-1')).rejects.toMatchObject({ code: 'SNAPSHOT_CORRUPT', reason: expect.stringContaining('record.status') });
    await expect(store.save(flowRecord('flow-1'), 6)).rejects.toMatchObject({ code: 'SNAPSHOT_CONFLICT', actualRevision: 7 });
    expect(await store.save(flowRecord('flow-1'), 7)).toBe(8);
  });

  it('a file holding another flow is corrupt', async () => {
    const dir = await tempDir();
    const store = new FileSnapshotStore(dir);
    await store.save(flowRecord('flow-1'), null);
    await writeFile(join(dir, 'flow-2.json'), await readFile(join(dir, 'flow-1.json')));
    await expect(store.load('flow-2')).rejects.toMatchObject({ code: 'SNAPSHOT_CORRUPT', reason: 'it holds flow flow-1, not flow-2' });
  });

  it('serializes many saves of one flow in one process: each sees the one before', async () => {
    const dir = await tempDir();
    const store = new FileSnapshotStore(dir);
    const first = await store.save(flowRecord('flow-1'), null);
    const saves = Array.from({ length: 10 }, (_, i) => store.save(flowRecord('flow-1', { state: `s${i}` }), first + i));
    expect(await Promise.all(saves)).toEqual(Array.from({ length: 10 }, (_, i) => first + i + 1));
    expect((await store.load('flow-1'))?.record.state).toBe('s9');
  });

  it('knows the revision it wrote without reading it back, yet sees a file another writer put in its place', async () => {
    const dir = await tempDir();
    const mine = new FileSnapshotStore(dir);
    const theirs = new FileSnapshotStore(dir);
    expect(await mine.save(flowRecord('flow-1'), null)).toBe(1);
    expect(await mine.save(flowRecord('flow-1', { state: 'a' }), 1)).toBe(2);
    expect(await theirs.save(flowRecord('flow-1', { state: 'b' }), 2)).toBe(3);
    await expect(mine.save(flowRecord('flow-1', { state: 'c' }), 2)).rejects.toMatchObject({ code: 'SNAPSHOT_CONFLICT', actualRevision: 3 });
    expect(await mine.save(flowRecord('flow-1', { state: 'd' }), 3)).toBe(4);
    // Rewritten in place, same inode and length: the mtime tells.
    const text = await readFile(join(dir, 'flow-1.json'), 'utf8');
    await writeFile(join(dir, 'flow-1.json'), text.replace('"revision":4', '"revision":9'));
    await utimes(join(dir, 'flow-1.json'), new Date(), new Date(Date.now() - 60_000));
    await expect(mine.save(flowRecord('flow-1'), 4)).rejects.toMatchObject({ code: 'SNAPSHOT_CONFLICT', actualRevision: 9 });
  });

  it('saves of many flows at once share directory fsyncs, and every one lands', async () => {
    const dir = await tempDir();
    const store = new FileSnapshotStore(dir);
    const revisions = await Promise.all(
      Array.from({ length: 50 }, async (_, i) => {
        let revision = await store.save(flowRecord(`flow-${i}`), null);
        for (let k = 0; k < 3; k++) revision = await store.save(flowRecord(`flow-${i}`, { state: `s${k}` }), revision);
        return revision;
      }),
    );
    expect(revisions).toEqual(Array.from({ length: 50 }, () => 4));
    const reread = new FileSnapshotStore(dir);
    for (let i = 0; i < 50; i++) expect(await reread.load(`flow-${i}`)).toMatchObject({ revision: 4, record: { state: 's2' } });
  });
});
