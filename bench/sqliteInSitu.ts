/**
 * Would embedded mode be faster on SQLite than on lmdb? The same FlowHost, in this one
 * process (as `microtask run` runs flows), with the embedded stores swapped:
 *
 * - bare XState: the floor (bench/setups.ts bareSetup);
 * - lmdb + lmdb journal: embeddedSetup() as bench/setups.ts builds it (as `microtask run` runs);
 * - lmdb, no journal / SQLite, no journal: the fair pair (the lmdb journal keeps a step by
 *   reference to lmdb's copy; beside SQLite it would write every snapshot a second time,
 *   into a second database with a commit of its own, so neither row has a journal);
 * - SQLite + lmdb journal: what switching the stores alone would give (steps written twice).
 *
 * Rounds are interleaved (every setup once per round, the order rotated) so that drift of
 * the shared machine spreads over all rows. Per workload: (a) one-microtask flows, 64 in
 * flight, 2000 in all; (b) the feedback loop, 16 in flight, 400 in all. Figures are the
 * medians over rounds; each setup must have stored every step of its last flows.
 *
 *   npx tsx bench/sqliteInSitu.ts [--rounds 3]
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { MicrotaskRunner } from '../src/actors/microtask.js';
import type { ResultsStore } from '../src/actors/ResultsStore.js';
import { answerSchemas } from '../src/contracts/answers.js';
import { LmdbJournal } from '../src/journal/LmdbJournal.js';
import { LmdbResultsStore } from '../src/persistence/LmdbResultsStore.js';
import { LmdbSnapshotStore } from '../src/persistence/LmdbSnapshotStore.js';
import { LmdbStore } from '../src/persistence/LmdbStore.js';
import type { SnapshotStore } from '../src/persistence/SnapshotStore.js';
import { benchModel, feedbackInput, flag, fmt, median, microtaskInput, note, percentile, pool, table, type PoolResult } from './lib.js';
import { bareSetup, embeddedSetup, hostedSetup, type Pattern, type Setup } from './setups.js';
import { SqliteDatabase, SqliteResultsStore, SqliteSnapshotStore } from './sqliteStores.js';
import { checkSteps, stepProblems, stepsVerdict, transitionsOf, type StoredSteps } from './steps.js';

const rounds = Number(flag('rounds') ?? 3);

/** embeddedSetup's wiring, with the stores (and journal) chosen here. */
async function storesSetup(name: string, kind: 'lmdb' | 'sqlite', withJournal: boolean): Promise<Setup & { commits?: () => string }> {
  const dir = await mkdtemp(join(tmpdir(), `bench-${kind}-`));
  const lmdb = kind === 'lmdb' || withJournal ? await LmdbStore.open(dir) : undefined;
  const sqlite = kind === 'sqlite' ? new SqliteDatabase(join(dir, 'state.sqlite')) : undefined;
  const results: ResultsStore = sqlite ? new SqliteResultsStore(sqlite) : await LmdbResultsStore.open(lmdb!);
  const store: SnapshotStore = sqlite ? new SqliteSnapshotStore(sqlite) : await LmdbSnapshotStore.open(lmdb!);
  const journal = withJournal ? await LmdbJournal.open(dir) : undefined;
  const runner = new MicrotaskRunner({ model: benchModel(), results, answers: answerSchemas });
  const setup = hostedSetup(name, {
    runner,
    store,
    ...(journal ? { journal } : {}),
    async close() {
      await journal?.close();
      await lmdb?.close();
      sqlite?.close();
      await rm(dir, { recursive: true, force: true });
    },
  });
  return {
    ...setup,
    ...(sqlite ? { commits: () => { const { writes, commits, blockedMs } = sqlite.stats; return `${fmt(writes / Math.max(1, commits), 1)} writes/commit, loop blocked ${fmt(blockedMs / Math.max(1, commits), 1)} ms/commit`; } } : {}),
  };
}

const SETUPS: Array<{ name: string; make: () => Promise<Setup & { commits?: () => string }> }> = [
  { name: 'bare XState (floor)', make: async () => bareSetup() },
  { name: 'lmdb + lmdb journal (embeddedSetup)', make: () => embeddedSetup() },
  { name: 'lmdb, no journal', make: () => storesSetup('lmdb, no journal', 'lmdb', false) },
  { name: 'SQLite, no journal', make: () => storesSetup('SQLite, no journal', 'sqlite', false) },
  { name: 'SQLite + lmdb journal', make: () => storesSetup('SQLite + lmdb journal', 'sqlite', true) },
];

const WORKLOADS: Array<{ name: string; pattern: Pattern; input: Record<string, unknown>; total: number; inFlight: number }> = [
  { name: '(a) microtask, 64 in flight', pattern: 'microtask', input: microtaskInput, total: 2000, inFlight: 64 },
  { name: '(b) feedback loop, 16 in flight', pattern: 'feedback-loop', input: feedbackInput, total: 400, inFlight: 16 },
];

interface Measure {
  result: PoolResult;
  cpuMsPerFlow: number;
  /** NaN when the timer never ran: flows that are all microtasks (bare) do not yield to timers until they end. */
  loopP99: number;
}

async function measure(setup: Setup, workload: (typeof WORKLOADS)[number]): Promise<Measure> {
  const delay = monitorEventLoopDelay({ resolution: 1 });
  const cpu0 = process.cpuUsage();
  delay.enable();
  const result = await pool(workload.total, workload.inFlight, () => setup.run(workload.pattern, workload.input));
  delay.disable();
  const cpu = process.cpuUsage(cpu0);
  return { result, cpuMsPerFlow: (cpu.user + cpu.system) / 1000 / workload.total, loopP99: delay.count >= 10 ? delay.percentile(99) / 1e6 : NaN };
}

const expected = new Map<Pattern, number>();
for (const w of WORKLOADS) expected.set(w.pattern, await transitionsOf(w.pattern, w.input));

const measures = new Map<string, Measure[]>();
const checks = new Map<string, string>();
const commitNotes = new Map<string, string>();
for (let round = 0; round < rounds; round++) {
  const order = SETUPS.map((_, i) => SETUPS[(i + round) % SETUPS.length]!);
  for (const { name, make } of order) {
    for (const workload of WORKLOADS) {
      // A fresh daemon and database per measurement, warmed up with a few flows of the workload.
      const setup = await make();
      try {
        await pool(Math.min(200, workload.total / 4), workload.inFlight, () => setup.run(workload.pattern, workload.input));
        const m = await measure(setup, workload);
        note(`round ${round + 1} ${name} ${workload.name}: ${fmt(m.result.perSecond, 0)}/s, cpu ${fmt(m.cpuMsPerFlow, 2)} ms/flow, loop p99 ${fmt(m.loopP99, 1)} ms`);
        const key = `${name}\u0000${workload.name}`;
        measures.set(key, [...(measures.get(key) ?? []), m]);
        if (m.result.failed) checks.set(key, `NO: ${m.result.failed} flows failed`);
        else if (setup.storedSteps) {
          const stored: StoredSteps = await setup.storedSteps();
          const problem = checkSteps(stored, expected.get(workload.pattern)!);
          if (problem || !checks.has(key)) checks.set(key, stepsVerdict(problem, expected.get(workload.pattern)!));
        } else checks.set(key, 'n/a (nothing stored)');
        const commits = (setup as { commits?: () => string }).commits?.();
        if (commits) commitNotes.set(key, commits);
      } finally {
        await setup.close();
      }
    }
  }
}

for (const workload of WORKLOADS) {
  const rows = SETUPS.map(({ name }) => {
    const key = `${name}\u0000${workload.name}`;
    const ms = measures.get(key)!;
    const rates = ms.map((m) => m.result.perSecond);
    return [
      name,
      `${fmt(median(rates), 0)} (${fmt(Math.min(...rates), 0)}–${fmt(Math.max(...rates), 0)})`,
      fmt(median(ms.map((m) => percentile(m.result.latencies, 50))), 1),
      fmt(median(ms.map((m) => percentile(m.result.latencies, 99))), 1),
      fmt(median(ms.map((m) => m.cpuMsPerFlow)), 2),
      fmt(median(ms.map((m) => m.loopP99)), 1),
      checks.get(key) ?? '',
      commitNotes.get(key) ?? '',
    ];
  });
  console.log(`\n### ${workload.name}, ${workload.total} flows, median of ${rounds} interleaved rounds\n`);
  console.log(table(['setup', 'flows/s (range)', 'p50 ms', 'p99 ms', 'CPU ms/flow', 'loop delay p99 ms', 'every step stored', 'SQLite group commit (incl. warm-up)'], rows));
}
if (stepProblems.length) process.exitCode = 1;
