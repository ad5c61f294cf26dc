import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it, vi } from 'vitest';
import { FileJournal } from '../../src/journal/FileJournal.js';
import type { JournalEntry, JournalError } from '../../src/journal/Journal.js';
import { LmdbJournal } from '../../src/journal/LmdbJournal.js';
import { LmdbSnapshotStore } from '../../src/persistence/LmdbSnapshotStore.js';
import { LmdbStore } from '../../src/persistence/LmdbStore.js';
import { childRecord, childStep } from '../persistence/lmdbChild.js';
import { runJournalContract } from './contract.js';

const dirs: string[] = [];
async function stateDir() {
  const dir = await mkdtemp(join(tmpdir(), 'lmdb-journal-'));
  dirs.push(dir);
  return dir;
}
afterAll(async () => {
  await Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true })));
});

runJournalContract('LmdbJournal', async () => {
  const dir = await stateDir();
  const errors: JournalError[] = [];
  const onError = (e: JournalError) => errors.push(e);
  const db = await LmdbStore.open(dir);
  const journal = new LmdbJournal(db, { onError, pollMs: 50 });
  const others: LmdbJournal[] = [];
  // Two corrupt entries written in one millisecond must not share a key (one would replace the other).
  let corrupted = 0;
  return {
    journal,
    errors,
    second: async () => {
      const other = new LmdbJournal(await LmdbStore.open(dir), { onError, pollMs: 50 });
      others.push(other);
      return other;
    },
    corrupt: async (flowId, raw) => {
      await db.dbs.journal.put([flowId, Date.now() * 1000 + 900 + corrupted++, 'corrupt'], raw);
    },
    close: async () => {
      for (const other of others) await other.close();
      await journal.close();
    },
  };
});

const at = () => new Date().toISOString();
const kinds = (entries: JournalEntry[]) => entries.map((e) => (e.kind === 'step' ? `step${e.step}` : e.kind === 'flow' ? e.phase : e.kind));

describe('LmdbJournal', () => {
  it("journals a step the snapshot store holds as a reference to it, and reads it back whole", async () => {
    const db = await LmdbStore.open(await stateDir());
    const store = await LmdbSnapshotStore.open(db);
    const journal = new LmdbJournal(await LmdbStore.open(db.stateDir));
    const step = childStep('flow-ref', 1);
    await store.save(childRecord('flow-ref', 's1'), null, { steps: [step] });
    const { snapshotJson, ...rest } = step;
    journal.append({ ...rest, kind: 'step', flowId: 'flow-ref', snapshot: undefined }, snapshotJson);
    await journal.flush();
    const stored = Array.from(db.dbs.journal.getRange({ start: ['flow-ref'], end: ['flow-ref', Number.MAX_SAFE_INTEGER] } as never), (e) => e.value);
    expect(stored).toEqual(['{"ref":"step","step":1}']);
    expect(await journal.read('flow-ref')).toEqual([{ ...rest, kind: 'step', flowId: 'flow-ref', snapshot: JSON.parse(snapshotJson) }]);
    await journal.close();
    await db.close();
  });

  it("writes a flow's entries of one tick as one value, one per line, and reads and follows them back in order", async () => {
    const db = await LmdbStore.open(await stateDir());
    const errors: JournalError[] = [];
    const journal = new LmdbJournal(await LmdbStore.open(db.stateDir), { onError: (e) => errors.push(e), pollMs: 50 });
    const followed: string[] = [];
    const follow = await journal.follow('flow-a', (e) => followed.push(kinds([e])[0]!));
    const entry = (flowId: string, state: string): JournalEntry => ({ kind: 'transition', flowId, at: at(), actor: 'root', machine: 'm', state, event: 'go' });
    // One tick: three entries of flow-a, one of flow-b between them.
    journal.append({ kind: 'flow', phase: 'started', flowId: 'flow-a', at: at(), pattern: 'p', status: 'running', input: {} });
    journal.append(entry('flow-a', 'one'));
    journal.append(entry('flow-b', 'other'));
    journal.append(entry('flow-a', 'two\nwith a newline in a string'));
    // The next tick: a value of its own.
    await new Promise((resolve) => setImmediate(resolve));
    journal.append(entry('flow-a', 'three'));
    await journal.flush();
    const stored = (flowId: string) => Array.from(db.dbs.journal.getRange({ start: [flowId], end: [flowId, Number.MAX_SAFE_INTEGER] } as never), (e) => e.value as string);
    expect(stored('flow-a').map((v) => v.split('\n').length)).toEqual([3, 1]);
    expect(stored('flow-b')).toHaveLength(1);
    const states = (entries: JournalEntry[]) => entries.map((e) => (e.kind === 'transition' ? e.state : kinds([e])[0]));
    expect(states(await journal.read('flow-a'))).toEqual(['started', 'one', 'two\nwith a newline in a string', 'three']);
    expect(states(await journal.read('flow-b'))).toEqual(['other']);
    await vi.waitFor(() => expect(followed).toEqual(['started', 'transition', 'transition', 'transition']));
    // A line that does not parse is skipped alone (reported); the rest of its value reads.
    await db.dbs.journal.put(['flow-a', Date.now() * 1000 + 999_999, 'corrupt'], `${JSON.stringify(entry('flow-a', 'four'))}\nnot json\n${JSON.stringify(entry('flow-a', 'five'))}`);
    expect(states(await journal.read('flow-a'))).toEqual(['started', 'one', 'two\nwith a newline in a string', 'three', 'four', 'five']);
    expect(errors.map((e) => e.code)).toEqual(['JOURNAL_CORRUPT_ENTRY']);
    await follow.stop();
    await journal.close();
    await db.close();
  });

  it('fills the steps saved but not journaled (a process killed between the two): before the next step, before a resume, at the end', async () => {
    const db = await LmdbStore.open(await stateDir());
    const store = await LmdbSnapshotStore.open(db);
    const journal = new LmdbJournal(await LmdbStore.open(db.stateDir));
    const id = 'flow-gaps';
    let revision: number | null = null;
    const save = async (n: number) => {
      revision = await store.save(childRecord(id, `s${n}`), revision, { steps: [childStep(id, n)] });
    };
    const journalStep = (n: number) => {
      const { snapshotJson, ...rest } = childStep(id, n);
      journal.append({ ...rest, kind: 'step', flowId: id, snapshot: undefined }, snapshotJson);
    };
    journal.append({ kind: 'flow', flowId: id, at: at(), phase: 'started', pattern: 'p', status: 'running' });
    await save(1);
    journalStep(1);
    await save(2);
    await save(3);
    journalStep(3);
    await save(4);
    // A resume comes from a later process: a step saved in the same millisecond as the resume
    // counts as the resumed run's (LmdbJournal's StepResolver), which a fast machine made
    // step 4 here (a CI failure on a fresh clone).
    await new Promise((resolve) => setTimeout(resolve, 3));
    journal.append({ kind: 'flow', flowId: id, at: at(), phase: 'resumed', pattern: 'p', status: 'running' });
    await save(5);
    journalStep(5);
    await save(6);
    await journal.flush();
    expect(kinds(await journal.read(id))).toEqual(['started', 'step1', 'step2', 'step3', 'step4', 'resumed', 'step5', 'step6']);

    // A follower gets the same, and the steps that arrive later once.
    const seen: JournalEntry[] = [];
    const follower = await journal.follow(id, (e) => seen.push(e));
    expect(kinds(seen)).toEqual(['started', 'step1', 'step2', 'step3', 'step4', 'resumed', 'step5']);
    await save(7);
    journalStep(7);
    await journal.flush();
    expect(kinds(seen)).toEqual(['started', 'step1', 'step2', 'step3', 'step4', 'resumed', 'step5', 'step6', 'step7']);
    await follower.stop();
    await journal.close();
    await db.close();
  });

  it("follows a flow another process writes, every entry once and in order", async () => {
    const dir = await stateDir();
    const journal = new LmdbJournal(await LmdbStore.open(dir), { pollMs: 30 });
    const seen: JournalEntry[] = [];
    const follower = await journal.follow('flow-far', (e) => seen.push(e));
    const child = spawn(process.execPath, ['--import', 'tsx', new URL('./lmdbJournalChild.ts', import.meta.url).pathname, dir, 'flow-far', '60'], { stdio: ['ignore', 'inherit', 'inherit'] });
    expect(await new Promise((resolve) => child.once('exit', resolve))).toBe(0);
    const deadline = Date.now() + 5_000;
    while (seen.length < 61 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20));
    expect(kinds(seen)).toEqual([...Array.from({ length: 60 }, (_, i) => `step${i + 1}`), 'ended']);
    await follower.stop();
    await journal.close();
  });

  it('prunes the journals not written to since the retention, and keeps the others', async () => {
    const journal = new LmdbJournal(await LmdbStore.open(await stateDir()));
    journal.append({ kind: 'flow', flowId: 'old-1', at: at(), phase: 'started', pattern: 'p', status: 'running' });
    await journal.flush();
    await new Promise((resolve) => setTimeout(resolve, 20));
    const cut = new Date();
    await new Promise((resolve) => setTimeout(resolve, 5));
    journal.append({ kind: 'flow', flowId: 'new-1', at: at(), phase: 'started', pattern: 'p', status: 'running' });
    await journal.flush();
    expect(await journal.prune(cut)).toBe(1);
    expect(await journal.read('old-1')).toEqual([]);
    expect(await journal.read('new-1')).toHaveLength(1);
    expect(await journal.prune(cut)).toBe(0);
    await journal.close();
  });

  it("writes a flow's retention time once for a burst of turns, and again once the flow is pruned or removed", async () => {
    const dir = await stateDir();
    const db = await LmdbStore.open(dir);
    const journal = new LmdbJournal(db);
    const retentionTime = () => db.dbs.journalFlows.getEntry('burst-1')?.version;
    const entry = (phase: 'started' | 'resumed') => ({ kind: 'flow' as const, flowId: 'burst-1', at: at(), phase, pattern: 'p', status: 'running' as const });
    journal.append(entry('started'));
    await journal.flush();
    const first = retentionTime();
    expect(first).toBeGreaterThan(0);
    // Later turns of the same burst: their entries are written, the index is not (a write each before).
    for (let turn = 0; turn < 3; turn++) {
      await new Promise((resolve) => setTimeout(resolve, 5));
      journal.append(entry('resumed'));
      await journal.flush();
    }
    expect(retentionTime()).toBe(first);
    expect(await journal.read('burst-1')).toHaveLength(4);
    // Pruned (its index is older than the cut), then written again: indexed again, so a later prune finds it.
    await new Promise((resolve) => setTimeout(resolve, 5));
    expect(await journal.prune(new Date())).toBe(1);
    journal.append(entry('resumed'));
    await journal.flush();
    expect(retentionTime()).toBeGreaterThan(first!);
    await new Promise((resolve) => setTimeout(resolve, 5));
    expect(await journal.prune(new Date())).toBe(1);
    expect(await journal.read('burst-1')).toEqual([]);
    // Removed, then written again: indexed again.
    journal.append(entry('started'));
    await journal.flush();
    await journal.remove(['burst-1']);
    journal.append(entry('started'));
    await journal.flush();
    expect(retentionTime()).toBeGreaterThan(0);
    await journal.close();
  });

  it('reads the journal files of earlier versions first, then its own entries', async () => {
    const dir = await stateDir();
    const files = new FileJournal({ dir: join(dir, 'journal') });
    files.append({ kind: 'flow', flowId: 'flow-old', at: at(), phase: 'started', pattern: 'p', status: 'running' });
    await files.close();
    const journal = new LmdbJournal(await LmdbStore.open(dir), { legacy: new FileJournal({ dir: join(dir, 'journal') }) });
    journal.append({ kind: 'flow', flowId: 'flow-old', at: at(), phase: 'resumed', pattern: 'p', status: 'running' });
    await journal.flush();
    expect(kinds(await journal.read('flow-old'))).toEqual(['started', 'resumed']);
    await journal.remove(['flow-old']);
    expect(await journal.read('flow-old')).toEqual([]);
    await journal.close();
  });
});
