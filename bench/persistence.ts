/**
 * Part 4: the cost of persistence per transition, for each snapshot store, and how it grows
 * with the snapshot's size (1 KB, 10 KB, 100 KB of context).
 *
 * - store.save alone: one flow saving revision after revision (the latency of a
 *   transition's save), and 64 flows saving at once (saves per second);
 * - in situ: feedback-loop flows (6 microtasks, instant model, 16 in flight) run by a
 *   FlowHost whose snapshot carries that much context; time per saved transition.
 *
 * The in-memory KV store (no durability) is the floor.
 *
 *   npx tsx bench/persistence.ts [--quick] [--runs N]
 */
import { mkdtemp, open, rename, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { createMicrotaskLogic, MicrotaskRunner } from '../src/actors/microtask.js';
import { MemoryResultsStore } from '../src/actors/ResultsStore.js';
import { MemoryBus } from '../test/support/MemoryBus.js';
import { connectNatsBus } from '../src/bus/NatsBus.js';
import { FlowHost } from '../src/flowHost.js';
import { provideFlows } from '../src/flows.js';
import { silentLogger } from '../src/log.js';
import { answerSchemas } from '../src/contracts/answers.js';
import { FileSnapshotStore } from '../src/persistence/FileSnapshotStore.js';
import { LmdbSnapshotStore } from '../src/persistence/LmdbSnapshotStore.js';
import { LmdbStore } from '../src/persistence/LmdbStore.js';
import { KvSnapshotStore } from '../src/persistence/KvSnapshotStore.js';
import type { FlowSnapshotRecord, SnapshotStore } from '../src/persistence/SnapshotStore.js';
import { startNatsServer } from '../src/testing/natsServer.js';
import { benchModel, feedbackInput, fmt, median, note, quick, ratio, runs, table } from './lib.js';

const SIZES = [1_024, 10_240, 102_400];
const sizeName = (bytes: number) => `${bytes / 1024} KB`;

/** JSON-typical context of about `bytes`: an array of small records. */
function context(bytes: number) {
  const items = [];
  for (let i = 0, size = 2; size < bytes; i++) {
    const item = { id: `item-${i}`, text: 'lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod', score: i % 10 / 10 };
    items.push(item);
    size += JSON.stringify(item).length + 1;
  }
  return items;
}

function record(flowId: string, bytes: number): FlowSnapshotRecord {
  return {
    flowId,
    pattern: 'feedback-loop',
    machineId: 'feedbackLoop',
    machineVersion: 1,
    status: 'running',
    state: 'verifying',
    updatedAt: new Date().toISOString(),
    snapshot: { status: 'active', value: 'verifying', context: { notes: context(bytes) }, children: {} },
    seq: 0,
  };
}

let ids = 0;
const flowId = () => `bench-${process.pid}-${++ids}`;

/** One flow, `n` saves in a row: ms per save. */
async function sequentialSaves(store: SnapshotStore, bytes: number, n: number): Promise<number> {
  const base = record(flowId(), bytes);
  let revision = await store.save(base, null);
  const began = performance.now();
  for (let i = 0; i < n; i++) revision = await store.save({ ...base, seq: i + 1, updatedAt: new Date().toISOString() }, revision);
  return (performance.now() - began) / n;
}

/** 64 flows saving at once, `each` saves per flow: saves per second. */
async function concurrentSaves(store: SnapshotStore, bytes: number, each: number): Promise<number> {
  const began = performance.now();
  await Promise.all(
    Array.from({ length: 64 }, async () => {
      const base = record(flowId(), bytes);
      let revision = await store.save(base, null);
      for (let i = 0; i < each; i++) revision = await store.save({ ...base, seq: i + 1 }, revision);
    }),
  );
  return (64 * (each + 1)) / ((performance.now() - began) / 1000);
}

/** Feedback-loop flows through a FlowHost on `store`, the context carrying `bytes`: ms per saved transition. */
async function inSitu(store: SnapshotStore, bytes: number, flows: number): Promise<{ perSave: number; savesPerFlow: number }> {
  const runner = new MicrotaskRunner({ model: benchModel(), results: new MemoryResultsStore(), answers: answerSchemas });
  let saves = 0;
  const counting: SnapshotStore = {
    save: (r, rev) => (saves++, store.save(r, rev)),
    load: (id) => store.load(id),
    list: (f) => store.list(f),
    delete: (id) => store.delete(id),
    moveAside: (id, reason) => store.moveAside(id, reason),
    prune: (older, statuses) => store.prune(older, statuses),
  };
  const host = new FlowHost({ flows: provideFlows({ microtask: createMicrotaskLogic(runner) }), store: counting, logger: silentLogger, outRoot: tmpdir() });
  const input = { ...feedbackInput, notes: context(bytes) };
  const began = performance.now();
  let next = 0;
  await Promise.all(
    Array.from({ length: 16 }, async () => {
      while (next++ < flows) await host.finished(await host.start('feedback-loop', input));
    }),
  );
  const ms = performance.now() - began;
  return { perSave: ms / saves, savesPerFlow: saves / flows };
}

/**
 * What the disk allows, without our code: 64 writers at once, each (a) replacing a 1 KB file
 * as the file store does (new temp file, fsync, rename, directory fsync) or (b) appending
 * 1 KB to one shared file and fdatasync'ing it (what a write-ahead log does). Operations/s.
 */
async function deviceFloor(dir: string, seconds: number): Promise<{ replace: number; append: number }> {
  const data = 'x'.repeat(1024);
  const until = (ms: number) => performance.now() - ms < seconds * 1000;
  let replaced = 0;
  let began = performance.now();
  await Promise.all(
    Array.from({ length: 64 }, async (_, w) => {
      for (let i = 0; until(began); i++) {
        const temp = join(dir, `.w${w}-${i}.tmp`);
        const handle = await open(temp, 'wx');
        await handle.writeFile(data);
        await handle.sync();
        await handle.close();
        await rename(temp, join(dir, `w${w}.json`));
        const d = await open(dir, 'r');
        await d.sync();
        await d.close();
        replaced++;
      }
    }),
  );
  const replace = replaced / ((performance.now() - began) / 1000);
  const log = await open(join(dir, 'log'), 'a');
  let appended = 0;
  began = performance.now();
  await Promise.all(
    Array.from({ length: 64 }, async () => {
      while (until(began)) {
        await log.write(data);
        await log.datasync();
        appended++;
      }
    }),
  );
  await log.close();
  return { replace, append: appended / ((performance.now() - began) / 1000) };
}

export interface PersistenceRow {
  store: string;
  size: number;
  saveMs: number;
  savesPerSecond64: number;
  inSituMsPerSave: number;
  savesPerFlow: number;
}

export async function runPersistence(): Promise<{ rows: PersistenceRow[]; markdown: string; floors: Array<{ replace: number; append: number }> }> {
  const nats = await startNatsServer();
  const bus = await connectNatsBus({ servers: [nats.url] });
  const dir = await mkdtemp(join(tmpdir(), 'bench-persist-'));
  let buckets = 0;
  const stores: Array<[string, () => Promise<SnapshotStore>]> = [
    ['in-memory KV (not durable: the floor)', async () => new KvSnapshotStore(await new MemoryBus().keyValue(`m${++buckets}`))],
    ['file (temp, fsync, rename, dir fsync): before', async () => FileSnapshotStore.open(await mkdtemp(join(dir, 'f-')))],
    ['lmdb (group commit, fsync’d): embedded', async () => LmdbSnapshotStore.open(await LmdbStore.open(await mkdtemp(join(dir, 'l-'))))],
    ['NATS KV (JetStream, compare-and-set)', async () => new KvSnapshotStore(await bus.keyValue(`bench${process.pid}x${++buckets}`))],
  ];
  const n = quick ? 50 : 200;
  const flows = quick ? 30 : 100;
  const samples = new Map<string, { save: number[]; conc: number[]; situ: number[]; perFlow: number[] }>();
  const floors: Array<{ replace: number; append: number }> = [];
  try {
    for (let r = 0; r < runs; r++) {
      floors.push(await deviceFloor(await mkdtemp(join(dir, 'device-')), quick ? 1 : 2));
      note(`run ${r + 1}/${runs} the disk: ${fmt(floors.at(-1)!.replace, 0)} file replacements/s, ${fmt(floors.at(-1)!.append, 0)} appends+fdatasync/s (64 writers)`);
      for (const bytes of SIZES) {
        for (const [name, make] of stores) {
          const store = await make();
          const key = `${name}|${bytes}`;
          const s = samples.get(key) ?? { save: [], conc: [], situ: [], perFlow: [] };
          await sequentialSaves(store, bytes, 10); // warm
          s.save.push(await sequentialSaves(store, bytes, n));
          s.conc.push(await concurrentSaves(store, bytes, quick ? 3 : 8));
          const situ = await inSitu(store, bytes, flows);
          s.situ.push(situ.perSave);
          s.perFlow.push(situ.savesPerFlow);
          samples.set(key, s);
          note(`run ${r + 1}/${runs} ${name} ${sizeName(bytes)}: ${fmt(s.save.at(-1)!, 3)} ms/save, ${fmt(s.conc.at(-1)!, 0)} saves/s at 64, ${fmt(situ.perSave, 3)} ms/transition in situ`);
        }
      }
    }
  } finally {
    await bus.close();
    await nats.close();
    await LmdbStore.closeAll();
    await rm(dir, { recursive: true, force: true });
  }
  const rows: PersistenceRow[] = [];
  for (const bytes of SIZES) {
    for (const [name] of stores) {
      const s = samples.get(`${name}|${bytes}`)!;
      rows.push({
        store: name,
        size: bytes,
        saveMs: median(s.save),
        savesPerSecond64: median(s.conc),
        inSituMsPerSave: median(s.situ),
        savesPerFlow: median(s.perFlow),
      });
    }
  }
  const floorOf = (row: PersistenceRow) => rows.find((r) => r.size === row.size && r.store.startsWith('in-memory'))!;
  const markdown = table(
    ['store', 'context', 'ms per save (1 flow, in a row)', 'ratio to floor', 'saves/s (64 flows at once)', 'ms per transition in a feedback loop (16 flows)', 'ratio to floor', 'saves per flow'],
    rows.map((row) => {
      const floor = floorOf(row);
      return [
        row.store,
        sizeName(row.size),
        fmt(row.saveMs, 3),
        ratio(row.saveMs, floor.saveMs),
        fmt(row.savesPerSecond64, 0),
        fmt(row.inSituMsPerSave, 3),
        ratio(row.inSituMsPerSave, floor.inSituMsPerSave),
        fmt(row.savesPerFlow, 0),
      ];
    }),
  );
  const device =
    `The disk itself (no code of ours; 64 writers, 1 KB): ${fmt(median(floors.map((f) => f.replace)), 0)} file replacements/s ` +
    `(temp file, fsync, rename, directory fsync, as the file store does); ${fmt(median(floors.map((f) => f.append)), 0)} appends + fdatasync/s to one shared file ` +
    '(as a write-ahead log would: concurrent fdatasyncs of one file share the journal commit).';
  return { rows, markdown: `${markdown}\n\n${device}`, floors };
}

if (import.meta.url === pathToFileURL(process.argv[1]!).href) {
  const { markdown } = await runPersistence();
  console.log(`\n## 4. Persistence per transition, by snapshot size (median of ${runs} runs)\n\n${markdown}`);
  process.exit(0);
}
