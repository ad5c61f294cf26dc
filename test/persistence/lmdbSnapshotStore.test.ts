import { copyFile, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it, vi } from 'vitest';
import { FileSnapshotStore } from '../../src/persistence/FileSnapshotStore.js';
import { LmdbSnapshotStore } from '../../src/persistence/LmdbSnapshotStore.js';
import { LmdbStore } from '../../src/persistence/LmdbStore.js';
import { SnapshotConflictError, type FlowStep, type SnapshotStoreOptions } from '../../src/persistence/SnapshotStore.js';
import { expectStoreError, flowRecord, runSnapshotStoreContract } from './contract.js';

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

async function openStore(stateDir: string, options: SnapshotStoreOptions = {}) {
  const db = await LmdbStore.open(stateDir);
  opened.push(db);
  return { db, store: await LmdbSnapshotStore.open(db, options) };
}
const opened: LmdbStore[] = [];
afterEach(async () => {
  for (const db of opened.splice(0)) await db.close();
});

const step = (flowId: string, n: number, overrides: Partial<FlowStep> = {}): FlowStep => ({
  step: n,
  at: `2025-01-02T03:04:${String(n % 60).padStart(2, '0')}.000Z`,
  actor: n % 2 ? 'root' : 'module-auth/generate',
  machine: 'feedbackLoop',
  state: { generating: `s${n}` },
  event: `xstate.done.actor.${n}`,
  rootState: { generating: `s${n}` },
  snapshotJson: JSON.stringify({ flowId, n, text: 'é«»\n"' }),
  ...overrides,
});

describe('LmdbSnapshotStore: steps', () => {
  it('keeps each save’s steps with its record and gives them back in order, each flow its own', async () => {
    const { store } = await openStore(await tempDir());
    expect(store.keepsSteps).toBe(true);
    let revision = await store.save(flowRecord('flow-1'), null, { steps: [step('flow-1', 1), step('flow-1', 2)] });
    // Neighbours in key order: flow-10 and flow-1x sort right after flow-1.
    await store.save(flowRecord('flow-10'), null, { steps: [step('flow-10', 1)] });
    await store.save(flowRecord('flow-1x'), null, { steps: [step('flow-1x', 1)] });
    for (let n = 3; n <= 12; n += 3) {
      revision = await store.save(flowRecord('flow-1', { state: `s${n}` }), revision, { steps: [step('flow-1', n), step('flow-1', n + 1), step('flow-1', n + 2)] });
    }
    const steps = await store.readSteps('flow-1');
    expect(steps.map((s) => s.step)).toEqual(Array.from({ length: 14 }, (_, i) => i + 1));
    expect(steps[10]).toEqual(step('flow-1', 11));
    expect(await store.readSteps('flow-10')).toEqual([step('flow-10', 1)]);
    expect(await store.readSteps('flow-none')).toEqual([]);
  });

  it('loadAll reads a sleeping flow’s record without its snapshot (its step is not read); load reads it whole', async () => {
    const { store } = await openStore(await tempDir());
    const snapshot = { status: 'active', value: 'awaitingReview', context: { drafts: ['x'.repeat(5_000)] } };
    const asleep = { ...flowRecord('flow-asleep'), snapshot, steps: 1, waiting: [{ actor: 'root', state: 'awaitingReview', for: 'a review', events: ['review'] }], sleep: { wakeAt: 123 } } as never;
    const awake = { ...flowRecord('flow-awake'), snapshot, steps: 1 } as never;
    for (const [record, id] of [[asleep, 'flow-asleep'], [awake, 'flow-awake']] as const) {
      await store.save(record, null, { steps: [step(id, 1, { snapshotJson: JSON.stringify(snapshot) })] });
    }
    const all = new Map((await store.loadAll({ status: 'running' })).map((s) => [s.record.flowId, s]));
    expect(all.get('flow-asleep')).toMatchObject({ snapshotOmitted: true, record: { snapshot: null, sleep: { wakeAt: 123 } } });
    expect(all.get('flow-awake')!.snapshotOmitted).toBeUndefined();
    expect(all.get('flow-awake')!.record).toEqual(awake);
    expect((await store.load('flow-asleep'))!.record).toEqual(asleep);
    expect(all.get('flow-asleep')!.revision).toBe((await store.load('flow-asleep'))!.revision);
  });

  it('keeps a record’s snapshot once, in the last step of its save, and loads it whole (and moved aside whole)', async () => {
    const { db, store } = await openStore(await tempDir());
    const snapshot = { status: 'active', value: 'verifying', context: { drafts: ['x'.repeat(5_000)] } };
    const saved = { ...flowRecord('flow-1'), snapshot, steps: 2 } as never;
    await store.save(saved, null, { steps: [step('flow-1', 1), step('flow-1', 2, { snapshotJson: JSON.stringify(snapshot) })] });
    const raw = db.dbs.flows.get('flow-1')!;
    expect(raw.length).toBeLessThan(2_000);
    expect(JSON.parse(raw)).toMatchObject({ snapshotStep: 2 });
    expect((await store.load('flow-1'))!.record).toEqual(saved);
    // A save whose last step is not the record's (no steps, or another step count) keeps the snapshot in the record.
    const revision = (await store.load('flow-1'))!.revision;
    await store.save({ ...flowRecord('flow-1'), snapshot, steps: 7 } as never, revision, { steps: [step('flow-1', 3)] });
    expect(JSON.parse(db.dbs.flows.get('flow-1')!).snapshot).toEqual(snapshot);
    expect((await store.load('flow-1'))!.record.snapshot).toEqual(snapshot);
    const third = await store.save({ ...(saved as object), steps: 5 } as never, revision + 1, {
      steps: [step('flow-1', 4), step('flow-1', 5, { snapshotJson: JSON.stringify(snapshot) })],
    });
    expect(third).toBe(revision + 2);
    expect(JSON.parse(db.dbs.flows.get('flow-1')!)).toMatchObject({ snapshotStep: 5 });
    await store.moveAside('flow-1', 'looked odd');
    expect(JSON.parse(store.movedAside('flow-1')[0]!.raw).snapshot).toEqual(snapshot);
  });

  it('a save that loses the compare-and-set writes no step (same transaction as the record)', async () => {
    const { store } = await openStore(await tempDir());
    const first = await store.save(flowRecord('flow-1'), null, { steps: [step('flow-1', 1)] });
    await store.save(flowRecord('flow-1', { state: 'mine' }), first, { steps: [step('flow-1', 2)] });
    const stale = store.save(flowRecord('flow-1', { state: 'stale' }), first, { steps: [step('flow-1', 2, { event: 'stale' }), step('flow-1', 3)] });
    await expect(stale).rejects.toBeInstanceOf(SnapshotConflictError);
    await expect(store.save(flowRecord('flow-1'), null, { steps: [step('flow-1', 9)] })).rejects.toBeInstanceOf(SnapshotConflictError);
    await expect(store.save(flowRecord('flow-2'), 4, { steps: [step('flow-2', 1)] })).rejects.toBeInstanceOf(SnapshotConflictError);
    expect(await store.readSteps('flow-1')).toEqual([step('flow-1', 1), step('flow-1', 2)]);
    expect(await store.readSteps('flow-2')).toEqual([]);
  });

  it('rejects a step number that is not a positive integer, writing nothing', async () => {
    const { store } = await openStore(await tempDir());
    await expectStoreError(store.save(flowRecord('flow-1'), null, { steps: [step('flow-1', 0)] }), 'SNAPSHOT_INVALID');
    await expectStoreError(store.save(flowRecord('flow-1'), null, { steps: [step('flow-1', 1.5)] }), 'SNAPSHOT_INVALID');
    expect(await store.load('flow-1')).toBeUndefined();
  });

  it('delete, prune and moveAside take the flow’s steps with it, and leave the neighbours’', async () => {
    const { store } = await openStore(await tempDir());
    for (const flowId of ['flow-1', 'flow-10', 'flow-2', 'flow-3']) {
      const status = flowId === 'flow-2' ? 'done' : 'running';
      await store.save(flowRecord(flowId, { status, updatedAt: '2024-01-01T00:00:00.000Z' }), null, { steps: [step(flowId, 1), step(flowId, 2)] });
    }
    await store.delete('flow-1');
    expect(await store.readSteps('flow-1')).toEqual([]);
    expect(await store.prune(new Date('2024-06-01T00:00:00.000Z'))).toBe(1);
    expect(await store.readSteps('flow-2')).toEqual([]);
    await store.moveAside('flow-3', 'looked odd');
    expect(await store.readSteps('flow-3')).toEqual([]);
    expect(store.movedAside('flow-3')).toMatchObject([{ flowId: 'flow-3', reason: 'looked odd', revision: 1, raw: JSON.stringify(flowRecord('flow-3', { updatedAt: '2024-01-01T00:00:00.000Z' })) }]);
    expect((await store.readSteps('flow-10')).map((s) => s.step)).toEqual([1, 2]);
    // Created again: from revision 1, without the old steps.
    expect(await store.save(flowRecord('flow-1'), null, { steps: [step('flow-1', 1)] })).toBe(1);
    expect(await store.readSteps('flow-1')).toEqual([step('flow-1', 1)]);
  });
});

describe('LmdbSnapshotStore: revisions', () => {
  it('each save’s revision is the expected one plus one, so saves of one flow can be pipelined', async () => {
    const { store } = await openStore(await tempDir());
    expect(LmdbSnapshotStore.nextRevision(null)).toBe(1);
    expect(LmdbSnapshotStore.nextRevision(7)).toBe(8);
    // Issued all at once: each expects the revision the one before will make.
    const saves: Promise<number>[] = [];
    let expected: number | null = null;
    for (let i = 0; i < 20; i++) {
      saves.push(store.save(flowRecord('flow-p', { state: `s${i}` }), expected, { steps: [step('flow-p', i + 1)] }));
      expected = LmdbSnapshotStore.nextRevision(expected);
    }
    // A stale save in the middle of the pipeline loses; the ones after it still win.
    const stale = store.save(flowRecord('flow-p', { state: 'stale' }), 3);
    for (let i = 20; i < 25; i++) {
      saves.push(store.save(flowRecord('flow-p', { state: `s${i}` }), expected, { steps: [step('flow-p', i + 1)] }));
      expected = LmdbSnapshotStore.nextRevision(expected);
    }
    expect(await Promise.all(saves)).toEqual(Array.from({ length: 25 }, (_, i) => i + 1));
    await expect(stale).rejects.toMatchObject({ code: 'SNAPSHOT_CONFLICT' });
    expect(await store.load('flow-p')).toEqual({ record: flowRecord('flow-p', { state: 's24' }), revision: 25 });
    expect((await store.readSteps('flow-p')).map((s) => s.step)).toEqual(Array.from({ length: 25 }, (_, i) => i + 1));
  });

  it('pipelined saves after one that loses all lose (each sees what the one before left)', async () => {
    const { store } = await openStore(await tempDir());
    await store.save(flowRecord('flow-q'), null);
    // Another owner moved the flow on: this pipeline started from a stale revision.
    await store.save(flowRecord('flow-q', { state: 'theirs' }), 1);
    const results = await Promise.allSettled([1, 2, 3].map((r) => store.save(flowRecord('flow-q', { state: `mine-${r}` }), r)));
    // Expecting 2 matches what the other owner left: exactly that one wins, then 3 follows it.
    expect(results.map((r) => r.status)).toEqual(['rejected', 'fulfilled', 'fulfilled']);
    expect((await store.load('flow-q'))?.record.state).toBe('mine-3');
  });
});

describe('LmdbSnapshotStore: list', () => {
  it('lists 10,000 flows from their summaries, without reading the records', async () => {
    const { store, db } = await openStore(await tempDir());
    const big = { context: { notes: 'x'.repeat(2000) } };
    for (let batch = 0; batch < 10; batch++) {
      await Promise.all(
        Array.from({ length: 1000 }, (_, i) => {
          const n = batch * 1000 + i;
          return store.save(flowRecord(`flow-${n}`, { snapshot: big, status: n % 3 ? 'running' : 'done', updatedAt: new Date(Date.UTC(2025, 0, 1) + n * 1000).toISOString() }), null);
        }),
      );
    }
    // Reading a record would parse it: a list that parses 10,000 records of 2 KB is what this rules out.
    const parse = vi.spyOn(JSON, 'parse');
    const started = performance.now();
    const all = await store.list();
    const elapsed = performance.now() - started;
    expect(parse).not.toHaveBeenCalled();
    parse.mockRestore();
    console.info(`listed ${all.length} flows in ${elapsed.toFixed(0)} ms`);
    expect(all).toHaveLength(10_000);
    expect(all[0]!.flowId).toBe('flow-0');
    expect(all[9_999]!.flowId).toBe('flow-9999');
    expect((await store.list({ status: 'done' })).length).toBe(3334);
    // A record changed behind the summary's back is read, and reported when corrupt.
    await db.dbs.flows.put('flow-5', '{"torn', 2);
    const reported: string[] = [];
    const watched = new LmdbSnapshotStore(db, { onCorrupt: (e) => void reported.push(e.flowId) });
    expect((await watched.list()).length).toBe(9_999);
    expect(reported).toEqual(['flow-5']);
  }, 60_000);
});

describe('LmdbSnapshotStore: flows of earlier versions (FileSnapshotStore files)', () => {
  it('imports <stateDir>/flows/*.json at their revision on open, moves the files to flows/imported/, and keeps corrupt ones as corrupt', async () => {
    const stateDir = await tempDir();
    const files = new FileSnapshotStore(join(stateDir, 'flows'));
    let revision = await files.save(flowRecord('old-1', { status: 'done', updatedAt: '2025-01-01T00:00:00.000Z' }), null);
    revision = await files.save(flowRecord('old-1', { status: 'done', state: 'finished', updatedAt: '2025-01-01T00:00:00.000Z' }), revision);
    await files.save(flowRecord('old-2', { updatedAt: '2025-01-02T00:00:00.000Z' }), null);
    await writeFile(join(stateDir, 'flows', 'old-bad.json'), '{"revision": 3, "record": {"flowId": "old-b');
    await writeFile(join(stateDir, 'flows', 'notes.txt'), 'not a flow');

    const reported: string[] = [];
    const { store } = await openStore(stateDir, { onCorrupt: (e) => void reported.push(e.flowId) });
    expect(await store.load('old-1')).toEqual({ record: flowRecord('old-1', { status: 'done', state: 'finished', updatedAt: '2025-01-01T00:00:00.000Z' }), revision: 2 });
    expect((await store.list()).map((s) => s.flowId)).toEqual(['old-1', 'old-2']);
    expect(reported).toEqual(['old-bad']);
    await expectStoreError(store.load('old-bad'), 'SNAPSHOT_CORRUPT');
    // The import goes on from the file's revision.
    expect(await store.save(flowRecord('old-1', { status: 'done' }), 2)).toBe(3);
    expect((await readdir(join(stateDir, 'flows'))).sort()).toEqual(['imported', 'notes.txt']);
    expect((await readdir(join(stateDir, 'flows', 'imported'))).sort()).toEqual(['old-1.json', 'old-2.json', 'old-bad.json']);
  });

  it('never imports a flow twice: a file left behind by a process killed after the import is only moved, even when the flow was deleted since', async () => {
    const stateDir = await tempDir();
    await new FileSnapshotStore(join(stateDir, 'flows')).save(flowRecord('old-1'), null);
    await new FileSnapshotStore(join(stateDir, 'flows')).save(flowRecord('old-2'), null);
    const first = await openStore(stateDir);
    await first.store.delete('old-1');
    await first.store.save(flowRecord('old-2', { state: 'moved on' }), 1);
    await first.db.close();
    // What a kill between the import's commit and the file's rename leaves: the files still there.
    await copyFile(join(stateDir, 'flows', 'imported', 'old-1.json'), join(stateDir, 'flows', 'old-1.json'));
    await copyFile(join(stateDir, 'flows', 'imported', 'old-2.json'), join(stateDir, 'flows', 'old-2.json'));

    const { store } = await openStore(stateDir);
    expect(await store.load('old-1')).toBeUndefined();
    expect(await store.load('old-2')).toMatchObject({ revision: 2, record: { state: 'moved on' } });
    expect(await readdir(join(stateDir, 'flows'))).toEqual(['imported']);
  });

  it('a flow whose file was not imported yet (killed before the commit) is imported on the next open', async () => {
    const stateDir = await tempDir();
    const { store } = await openStore(stateDir);
    expect(await store.list()).toEqual([]);
    await new FileSnapshotStore(join(stateDir, 'flows')).save(flowRecord('late-1'), null);
    const reopened = await LmdbSnapshotStore.open(opened[0]!);
    expect(await reopened.load('late-1')).toEqual({ record: flowRecord('late-1'), revision: 1 });
  });
});

describe('LmdbStore', () => {
  it('shares one environment per path in a process: handles close independently, the last one closes it', async () => {
    const stateDir = await tempDir();
    const a = await LmdbStore.open(stateDir);
    const b = await LmdbStore.open(join(stateDir, '.', '')); // the same path written differently
    const shared = a.dbs;
    expect(b.dbs).toBe(shared);
    expect(a.path).toBe(join(stateDir, 'db'));
    const store = new LmdbSnapshotStore(b);
    await a.close();
    await a.close(); // twice: harmless, and not b's handle
    expect(() => a.dbs).toThrow(/is closed \(its handle was closed\)/);
    expect(await store.save(flowRecord('flow-1'), null)).toBe(1);
    await b.close();
    const c = await LmdbStore.open(stateDir);
    opened.push(c);
    // A new environment: the old one was closed with its last handle.
    expect(c.dbs).not.toBe(shared);
    expect(await new LmdbSnapshotStore(c).load('flow-1')).toMatchObject({ revision: 1 });
  });

  it('a store whose handle was closed fails at once with DB_CLOSED (a write to a closed environment would never settle)', async () => {
    const { db, store } = await openStore(await tempDir());
    await db.close();
    await expect(store.save(flowRecord('flow-1'), null)).rejects.toMatchObject({ code: 'DB_CLOSED', message: expect.stringContaining(db.path) });
    await expect(store.load('flow-1')).rejects.toMatchObject({ code: 'DB_CLOSED' });
    await expect(store.list()).rejects.toMatchObject({ code: 'DB_CLOSED' });
    await expect(db.claimRequest('req', 'flow-1')).rejects.toMatchObject({ code: 'DB_CLOSED' });
  });

  it('claims a request id for one flow: the same id gives that flow; a release lets a retry claim it; old claims are pruned', async () => {
    const { db } = await openStore(await tempDir());
    expect(await db.claimRequest('req-1', 'flow-a')).toBe('flow-a');
    expect(await db.claimRequest('req-1', 'flow-b')).toBe('flow-a');
    expect(await db.requestFlow('req-1')).toBe('flow-a');
    expect(await db.requestFlow('req-2')).toBeUndefined();
    // Concurrent claims of one id in this process: one flow for all.
    const claims = await Promise.all(['x', 'y', 'z'].map((f) => db.claimRequest('req-3', f)));
    expect(new Set(claims).size).toBe(1);
    // Only the flow holding it releases it.
    await db.releaseRequest('req-1', 'flow-b');
    expect(await db.requestFlow('req-1')).toBe('flow-a');
    await db.releaseRequest('req-1', 'flow-a');
    expect(await db.requestFlow('req-1')).toBeUndefined();
    expect(await db.claimRequest('req-1', 'flow-c')).toBe('flow-c');
    // Ids of any length and content.
    const long = `r${'é'.repeat(2000)}`;
    expect(await db.claimRequest(long, 'flow-long')).toBe('flow-long');
    expect(await db.claimRequest(`${long}x`, 'flow-other')).toBe('flow-other');
    expect(await db.requestFlow(long)).toBe('flow-long');
    expect(await db.pruneRequests(new Date(Date.now() - 60_000))).toBe(0);
    expect(await db.pruneRequests(new Date(Date.now() + 1))).toBe(4);
    expect(await db.requestFlow('req-1')).toBeUndefined();
  });
});
