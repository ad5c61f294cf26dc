/**
 * The embedded stores side by side: 64 writers at once, 2 KB records, for a few seconds each.
 *
 * - snapshots: FileSnapshotStore (temp file, fsync, rename, directory fsync) vs
 *   LmdbSnapshotStore (lmdb-js: the saves of an event-loop turn in one transaction, one
 *   fsync), the latter also with one 2 KB step per save (as the host saves them);
 * - results: LogResultsStore (one append and one fdatasync per batch) vs LmdbResultsStore;
 * - the disk without our code: 64 writers appending 2 KB to one file + fdatasync;
 * - the alternative not chosen: SQLite (better-sqlite3, WAL, synchronous=FULL), the saves of
 *   an event-loop turn in one transaction (group commit as lmdb does it): its commit, fsync
 *   included, runs on the event loop, which the event-loop delay column shows.
 *
 * Every write is durable when it resolves, in each store. Each writer saves its own flow
 * (at the revision its last save returned) or puts its own keys, in a loop.
 *
 *   npx tsx bench/stores.ts [--seconds 5] [--runs 1]
 */
import { mkdtemp, open, rm } from 'node:fs/promises';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import Database from 'better-sqlite3';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { MicrotaskResult } from '../src/contracts/microtask.js';
import type { ResultsStore } from '../src/actors/ResultsStore.js';
import { FileSnapshotStore } from '../src/persistence/FileSnapshotStore.js';
import { LmdbResultsStore } from '../src/persistence/LmdbResultsStore.js';
import { LmdbSnapshotStore } from '../src/persistence/LmdbSnapshotStore.js';
import { LmdbStore } from '../src/persistence/LmdbStore.js';
import { LogResultsStore } from '../src/persistence/LogResultsStore.js';
import type { FlowSnapshotRecord, FlowStep, SnapshotStore } from '../src/persistence/SnapshotStore.js';
import { flag, fmt, median, note, ratio, table } from './lib.js';

const WRITERS = 64;
const seconds = Number(flag('seconds') ?? 5);
const runs = Number(flag('runs') ?? 1);
const NOTE = 'lorem ipsum dolor sit amet, consectetur adipiscing elit '.repeat(40).slice(0, 1700);

function record(flowId: string, i: number): FlowSnapshotRecord {
  return {
    flowId,
    pattern: 'feedback-loop',
    machineId: 'feedbackLoop',
    machineVersion: 1,
    status: 'running',
    state: 'verifying',
    updatedAt: new Date().toISOString(),
    snapshot: { status: 'active', value: 'verifying', context: { iteration: i, note: NOTE }, children: {} },
    seq: i,
  };
}

function step(n: number, snapshot: FlowSnapshotRecord['snapshot']): FlowStep {
  return { step: n, at: new Date().toISOString(), actor: 'root', machine: 'feedbackLoop', state: 'verifying', event: 'next', rootState: 'verifying', snapshotJson: JSON.stringify(snapshot) };
}

function result(key: string): MicrotaskResult {
  return {
    success: true,
    taskType: 'generate',
    key,
    result: { code: NOTE },
    durationMs: 12.5,
    usage: { inputTokens: 120, outputTokens: 80, cacheCreationInputTokens: 0, cacheReadInputTokens: 0, calls: 1 },
    cached: false,
  };
}

/** The longest the event loop was blocked (p99, ms) in the last `writers` run. */
const loopDelay = new Map<string, number[]>();
let measuring = '';

/** `WRITERS` loops of `one` for `seconds`: operations per second. */
async function writers(one: (writer: number, i: number) => Promise<unknown>): Promise<number> {
  const until = performance.now() + seconds * 1000;
  let done = 0;
  const delay = monitorEventLoopDelay({ resolution: 1 });
  delay.enable();
  const began = performance.now();
  await Promise.all(
    Array.from({ length: WRITERS }, async (_, w) => {
      for (let i = 0; performance.now() < until; i++) {
        await one(w, i);
        done++;
      }
    }),
  );
  delay.disable();
  if (measuring) loopDelay.set(measuring, [...(loopDelay.get(measuring) ?? []), delay.percentile(99) / 1e6]);
  return done / ((performance.now() - began) / 1000);
}

/**
 * SQLite as the embedded store would use it: WAL, synchronous=FULL (every commit fsync'd),
 * a compare-and-set on a revision column, and the saves of one event-loop turn in one
 * transaction. better-sqlite3 is synchronous: the commit blocks the loop.
 */
function sqliteSaves(path: string) {
  const db = new Database(path);
  db.pragma('journal_mode = WAL');
  db.pragma('synchronous = FULL');
  db.exec('CREATE TABLE flows (id TEXT PRIMARY KEY, revision INTEGER NOT NULL, json TEXT NOT NULL)');
  const insert = db.prepare('INSERT INTO flows (id, revision, json) VALUES (?, 1, ?)');
  const update = db.prepare('UPDATE flows SET revision = revision + 1, json = ? WHERE id = ? AND revision = ?');
  type Pending = { id: string; json: string; expected: number | null; resolve: (revision: number) => void; reject: (e: Error) => void };
  let queue: Pending[] = [];
  const commit = db.transaction((batch: Pending[]) =>
    batch.map((p) => (p.expected === null ? insert.run(p.id, p.json).changes : update.run(p.json, p.id, p.expected).changes)),
  );
  const flush = () => {
    const batch = queue;
    queue = [];
    const changes = commit(batch);
    batch.forEach((p, i) => (changes[i] === 1 ? p.resolve((p.expected ?? 0) + 1) : p.reject(new Error(`conflict on ${p.id}`))));
  };
  return {
    save(flowId: string, json: string, expected: number | null): Promise<number> {
      return new Promise((resolve, reject) => {
        if (queue.length === 0) setImmediate(flush);
        queue.push({ id: flowId, json, expected, resolve, reject });
      });
    },
    close: () => db.close(),
  };
}

async function sqliteRun(path: string): Promise<number> {
  const sqlite = sqliteSaves(path);
  const revisions = new Map<number, number>();
  try {
    return await writers(async (w, i) => {
      const r = record(`sqlite-${w}`, i);
      revisions.set(w, await sqlite.save(r.flowId, JSON.stringify(r), revisions.get(w) ?? null));
    });
  } finally {
    sqlite.close();
  }
}

async function saves(store: SnapshotStore, withSteps: boolean): Promise<number> {
  const revisions = new Map<number, number>();
  const prefix = `bench-${Math.random().toString(36).slice(2, 8)}`;
  return writers(async (w, i) => {
    const r = record(`${prefix}-${w}`, i);
    const options = withSteps ? { steps: [step(i + 1, r.snapshot)] } : {};
    revisions.set(w, await store.save(r, revisions.get(w) ?? null, options));
  });
}

async function puts(store: ResultsStore): Promise<number> {
  return writers((w, i) => {
    const key = `bench-${w}/item-${i}/generate/0`;
    return store.put(key, result(key));
  });
}

/** What the disk allows without our code: 64 writers appending 2 KB to one file, each followed by fdatasync. */
async function appendFloor(dir: string): Promise<number> {
  const log = await open(join(dir, 'floor.log'), 'a');
  try {
    const data = Buffer.from(NOTE.padEnd(2048, '.'));
    return await writers(async () => {
      await log.write(data);
      await log.datasync();
    });
  } finally {
    await log.close();
  }
}

async function withDb<T>(stateDir: string, fn: (db: LmdbStore) => Promise<T>): Promise<T> {
  const db = await LmdbStore.open(stateDir);
  try {
    return await fn(db);
  } finally {
    await db.close();
  }
}

async function main() {
  const dir = await mkdtemp(join(tmpdir(), 'bench-stores-'));
  const samples: Record<string, number[]> = {};
  const measure = async (name: string, run: () => Promise<number>) => {
    measuring = name;
    add(name, await run());
    measuring = '';
  };
  const add = (name: string, value: number) => {
    (samples[name] ??= []).push(value);
    note(`${name}: ${fmt(value, 0)}/s`);
  };
  note(`${WRITERS} writers, 2 KB records, ${seconds} s each, ${runs} run(s), in ${dir}`);
  try {
    for (let r = 0; r < runs; r++) {
      const run = join(dir, `run-${r}`);
      add('disk: append 2 KB + fdatasync', await appendFloor(await mkdtemp(join(dir, 'floor-'))));

      await measure('FileSnapshotStore saves', async () => saves(await FileSnapshotStore.open(join(run, 'file', 'flows')), false));
      // Each lmdb measurement on a database of its own: none pays for what another left.
      await measure('LmdbSnapshotStore saves', () => withDb(join(run, 'lmdb-saves'), async (db) => saves(await LmdbSnapshotStore.open(db), false)));
      await measure('LmdbSnapshotStore saves + one 2 KB step each', () =>
        withDb(join(run, 'lmdb-steps'), async (db) => saves(await LmdbSnapshotStore.open(db), true)),
      );
      await measure('SQLite saves (WAL, FULL, one transaction per turn)', () => sqliteRun(join(run, 'sqlite.db')));
      const log = new LogResultsStore(join(run, 'log', 'results'));
      add('LogResultsStore puts', await puts(log));
      await log.close();
      add('LmdbResultsStore puts', await withDb(join(run, 'lmdb-results'), async (db) => puts(await LmdbResultsStore.open(db))));
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  const m = (name: string) => median(samples[name]!);
  const spread = (name: string) => (runs > 1 ? `${fmt(Math.min(...samples[name]!), 0)}–${fmt(Math.max(...samples[name]!), 0)}` : '');
  const row = (name: string, label: string, baseline?: string) => [
    label,
    fmt(m(name), 0),
    spread(name),
    baseline === undefined ? '' : baseline === name ? '1.00x' : ratio(m(name), m(baseline)),
    loopDelay.has(name) ? fmt(median(loopDelay.get(name)!), 1) : '',
  ];
  const rows = [
    row('disk: append 2 KB + fdatasync', 'disk: append 2 KB + fdatasync (no store)'),
    row('FileSnapshotStore saves', 'FileSnapshotStore saves', 'FileSnapshotStore saves'),
    row('LmdbSnapshotStore saves', 'LmdbSnapshotStore saves', 'FileSnapshotStore saves'),
    row('LmdbSnapshotStore saves + one 2 KB step each', 'LmdbSnapshotStore saves + one 2 KB step each', 'FileSnapshotStore saves'),
    row('SQLite saves (WAL, FULL, one transaction per turn)', 'SQLite saves (better-sqlite3, WAL, synchronous=FULL, one transaction per turn)', 'FileSnapshotStore saves'),
    row('LogResultsStore puts', 'LogResultsStore puts', 'LogResultsStore puts'),
    row('LmdbResultsStore puts', 'LmdbResultsStore puts', 'LogResultsStore puts'),
  ];
  process.stdout.write(`\n${WRITERS} writers, 2 KB records, ${seconds} s each, median of ${runs} run(s):\n\n`);
  process.stdout.write(`${table(['store', 'durable writes/s (median)', 'runs min–max', 'vs the one it replaces', 'event-loop delay p99 ms'], rows)}\n`);
}

await main();
