/**
 * Where an embedded flow's time goes: the same flows through a FlowHost with its parts taken
 * away one at a time (the journal, the results store, the snapshot store, all three), each
 * in a fresh state directory, rounds interleaved. What a part costs is the difference in
 * the main thread's CPU per flow (what limits an embedded host: its event loop; read from
 * /proc, so other processes' load moves it less than the rate); the event loop's
 * utilization says how close to that limit it ran.
 *
 *   npx tsx bench/ablation.ts [--pattern microtask|feedback-loop] [--total N] [--in-flight K] [--rounds R] [--only I]
 *
 * The removed parts are stand-ins (a store that keeps nothing, results in memory): this is
 * a diagnostic, not a setup anyone should run.
 */
import { readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { MicrotaskRunner } from '../src/actors/microtask.js';
import { MemoryResultsStore } from '../src/actors/ResultsStore.js';
import { openEmbeddedState } from '../src/composition.js';
import { loadConfig } from '../src/config.js';
import { answerSchemas } from '../src/contracts/answers.js';
import { silentLogger } from '../src/log.js';
import type { SnapshotStore } from '../src/persistence/SnapshotStore.js';
import { benchModel, feedbackInput, flag, fmt, microtaskInput, pool } from './lib.js';
import { hostedSetup, type Pattern } from './setups.js';

interface Variant {
  name: string;
  journal: boolean;
  results: boolean;
  store: boolean;
}

const variants: Variant[] = [
  { name: 'everything (as `run` and the orchestrator)', journal: true, results: true, store: true },
  { name: 'no journal', journal: false, results: true, store: true },
  { name: 'results in memory', journal: true, results: false, store: true },
  { name: 'snapshot store keeps nothing', journal: true, results: true, store: false },
  { name: 'none of the three (host and machines only)', journal: false, results: false, store: false },
];

/** Saves nothing and answers every save with the next revision: the host's side of saving only. */
function storeKeepingNothing(): SnapshotStore {
  return {
    keepsSteps: true,
    save: async (_record, expected) => (expected ?? 0) + 1,
    load: async () => undefined,
    list: async () => [],
    loadAll: async () => [],
    delete: async () => undefined,
    moveAside: async () => undefined,
    prune: async () => 0,
  };
}

/** CPU time (ms) of the calling thread (the main thread here), from /proc; NaN off Linux. */
function threadCpuMs(): number {
  try {
    const stat = readFileSync('/proc/thread-self/stat', 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return ((Number(fields[11]) + Number(fields[12])) * 1000) / 100;
  } catch {
    return NaN;
  }
}

async function measure(variant: Variant, pattern: Pattern, total: number, inFlight: number) {
  const dir = await mkdtemp(join(tmpdir(), 'bench-ablation-'));
  const state = await openEmbeddedState(loadConfig({ MICROTASK_STATE_DIR: dir }), silentLogger);
  const setup = hostedSetup(variant.name, {
    runner: new MicrotaskRunner({
      model: benchModel(),
      ...(variant.results ? { results: state.results, resultsOrderedBeforeSaves: state.resultsOrderedBeforeSaves } : { results: new MemoryResultsStore() }),
      answers: answerSchemas,
    }),
    store: variant.store ? state.store : storeKeepingNothing(),
    ...(variant.journal ? { journal: state.journal } : {}),
    async close() {
      await state.close();
      await rm(dir, { recursive: true, force: true });
    },
  });
  const input = pattern === 'microtask' ? microtaskInput : feedbackInput;
  try {
    await pool(Math.min(300, total), inFlight, () => setup.run(pattern, input));
    const loop = performance.eventLoopUtilization();
    const cpu = process.cpuUsage();
    const main = threadCpuMs();
    const result = await pool(total, inFlight, () => setup.run(pattern, input));
    const used = process.cpuUsage(cpu);
    const mainUs = ((threadCpuMs() - main) * 1000) / total;
    return {
      perSecond: result.perSecond,
      cpuUs: (used.user + used.system) / total,
      mainUs,
      loop: performance.eventLoopUtilization(loop).utilization,
      failed: result.failed,
    };
  } finally {
    await setup.close();
  }
}

const pattern = (flag('pattern') ?? 'microtask') as Pattern;
const total = Number(flag('total') ?? (pattern === 'microtask' ? 6000 : 1500));
const inFlight = Number(flag('in-flight') ?? (pattern === 'microtask' ? 64 : 16));
const rounds = Number(flag('rounds') ?? 3);
/** One variant only (its index in the table), to profile it: `node --cpu-prof --import tsx bench/ablation.ts --only 0`. */
const only = flag('only') === undefined ? undefined : Number(flag('only'));
const seen = new Map<string, Array<Awaited<ReturnType<typeof measure>>>>();
// The JIT warms up on the first flows a process runs, whatever the parts: once untimed, and
// each round in another order, so no variant is measured colder than the others.
await measure(variants[only ?? 0]!, pattern, Math.min(total, 2000), inFlight);
for (let round = 1; round <= rounds; round++) {
  const order = variants.map((_, i) => variants[(i + round - 1) % variants.length]!);
  for (const variant of order) {
    if (only !== undefined && variant !== variants[only]) continue;
    const m = await measure(variant, pattern, total, inFlight);
    seen.set(variant.name, [...(seen.get(variant.name) ?? []), m]);
    console.error(`[ablation] round ${round}/${rounds} ${variant.name}: ${fmt(m.perSecond, 0)}/s`);
  }
}
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const full = median((seen.get(variants[0]!.name) ?? []).map((m) => m.mainUs));
console.log(`\n${pattern} flows, ${inFlight} in flight, ${total} per run, medians of ${rounds} interleaved rounds:\n`);
console.log('| parts | flows/s | main thread CPU µs per flow | saved vs everything | all threads CPU µs per flow | main thread busy | failed |');
console.log('| --- | --- | --- | --- | --- | --- | --- |');
for (const variant of variants) {
  const ms = seen.get(variant.name);
  if (!ms) continue;
  const main = median(ms.map((m) => m.mainUs));
  console.log(
    `| ${variant.name} | ${fmt(median(ms.map((m) => m.perSecond)), 0)} | ${fmt(main, 0)} | ${variant === variants[0] ? '–' : `${fmt(full - main, 0)} (${fmt((100 * (full - main)) / full, 0)}%)`} | ${fmt(median(ms.map((m) => m.cpuUs)), 0)} | ${fmt(100 * median(ms.map((m) => m.loop)), 0)}% | ${ms.reduce((n, m) => n + m.failed, 0)} |`,
  );
}
process.exit(0);
