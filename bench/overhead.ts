/**
 * Part 1: the overhead per microtask. Flows of the `microtask` pattern (one microtask
 * each) with an instant model, one at a time and 64 in flight, in each setup; the floor
 * is the same machine and actor with no bus and no persistence.
 *
 *   npx tsx bench/overhead.ts [--quick] [--runs N] [--no-sdk]
 */
import { pathToFileURL } from 'node:url';
import { cpus } from 'node:os';
import { args, fmt, median, met, microtaskInput, note, pool, quick, ratio, runs, startBenchAnthropic, summarizeRuns, table, type PoolResult } from './lib.js';
import { bareSetup, embeddedSetup, natsSetup, type Setup } from './setups.js';
import { checkSteps, stepProblems, stepsVerdict, transitionsOf } from './steps.js';

export interface OverheadRow {
  setup: string;
  model: string;
  inFlight: number;
  perSecond: number;
  p50: number;
  p99: number;
  failed: number;
  spread: string;
  /** CPU µs per microtask by process (median over runs), where the setup can tell. */
  cpu?: Record<string, number>;
  /** Whether the flows stored every transition (bench/steps.ts). */
  steps: string;
}

const IN_FLIGHT = 64;

async function measure(setup: Setup, total: number, inFlight: number): Promise<PoolResult & { cpu?: Record<string, number> }> {
  const before = setup.cpu?.();
  const result = await pool(total, inFlight, () => setup.run('microtask', microtaskInput));
  const after = setup.cpu?.();
  if (!before || !after) return result;
  return { ...result, cpu: Object.fromEntries(Object.keys(after).map((k) => [k, ((after[k]! - before[k]!) * 1000) / total])) };
}

/** Each setup, sequential and 64 in flight, `runs` times round-robin (so a noisy neighbour hits all alike). */
async function measureAll(setups: Setup[], modes: Array<{ inFlight: number; total: number }>, model: string): Promise<OverheadRow[]> {
  const results = new Map<string, Array<PoolResult & { cpu?: Record<string, number> }>>();
  const steps = new Map<Setup, string>();
  const expected = await transitionsOf('microtask', microtaskInput);
  for (const setup of setups) {
    note(`warming up ${setup.name} (${model})`);
    await measure(setup, quick ? 100 : 300, IN_FLIGHT);
  }
  for (let r = 0; r < runs; r++) {
    for (const mode of modes) {
      for (const setup of setups) {
        const result = await measure(setup, mode.total, mode.inFlight);
        note(`run ${r + 1}/${runs} ${setup.name}, ${mode.inFlight} in flight: ${fmt(result.perSecond, 0)}/s`);
        const key = `${setup.name}|${mode.inFlight}`;
        results.set(key, [...(results.get(key) ?? []), result]);
        if (setup.storedSteps && !steps.has(setup)) steps.set(setup, stepsVerdict(checkSteps(await setup.storedSteps(), expected), expected));
      }
    }
  }
  const rows: OverheadRow[] = [];
  for (const mode of modes) {
    for (const setup of setups) {
      const measured = results.get(`${setup.name}|${mode.inFlight}`)!;
      const s = summarizeRuns(measured);
      const cpuKeys = Object.keys(measured[0]?.cpu ?? {});
      const cpu = cpuKeys.length ? Object.fromEntries(cpuKeys.map((k) => [k, median(measured.map((m) => m.cpu![k]!))])) : undefined;
      rows.push({
        setup: setup.name,
        model,
        inFlight: mode.inFlight,
        perSecond: s.perSecond,
        p50: s.p50,
        p99: s.p99,
        failed: s.failed,
        spread: s.spread,
        steps: setup.storedSteps ? steps.get(setup)! : setup.name.startsWith('bare') ? '' : 'not kept',
        ...(cpu ? { cpu } : {}),
      });
    }
  }
  return rows;
}

export async function runOverhead(options: { sdk?: boolean } = {}): Promise<{ rows: OverheadRow[]; markdown: string }> {
  const modes = [
    { inFlight: 1, total: quick ? 100 : 300 },
    { inFlight: IN_FLIGHT, total: quick ? 600 : 2000 },
  ];
  const rows: OverheadRow[] = [];
  {
    const setups = [
      bareSetup(),
      await embeddedSetup(),
      await embeddedSetup({ store: 'files', name: 'embedded, before (a file per save; last snapshot only)' }),
      await natsSetup(),
    ];
    try {
      rows.push(...(await measureAll(setups, modes, 'instant (scripted)')));
    } finally {
      for (const s of setups) await s.close();
    }
  }
  if (options.sdk !== false) {
    const fake = await startBenchAnthropic();
    const model = { kind: 'sdk' as const, baseURL: fake.url };
    const setups = [bareSetup(model), await embeddedSetup({ model }), await natsSetup({ model })];
    try {
      rows.push(...(await measureAll(setups, [{ inFlight: IN_FLIGHT, total: quick ? 300 : 1000 }], 'real SDK → local server')));
    } finally {
      for (const s of setups) await s.close();
      await fake.close();
    }
  }
  return { rows, markdown: `${render(rows)}\n\n${renderCpu(rows)}` };
}

function render(rows: OverheadRow[]): string {
  const floor = (row: OverheadRow) => rows.find((r) => r.setup.startsWith('bare') && r.model === row.model && r.inFlight === row.inFlight)!;
  const target = (row: OverheadRow) => {
    if (row.model.startsWith('instant') && row.inFlight === IN_FLIGHT) {
      if (row.setup.startsWith('NATS')) return `≥3,000/s, p99 <20 ms: ${met(row.perSecond >= 3000 && row.p99 < 20)}`;
      if (row.setup.startsWith('embedded (')) return `≥4,000/s: ${met(row.perSecond >= 4000)}`;
    }
    return '';
  };
  return table(
    ['setup', 'model', 'in flight', 'microtasks/s', 'p50 ms', 'p99 ms', 'floor ÷ setup (rate)', 'overhead µs/microtask', 'runs (min–max /s)', 'every transition stored', 'target'],
    rows.map((row) => {
      const f = floor(row);
      // Sequential: added latency; in flight: added time per microtask at that rate.
      const overhead = row.inFlight === 1 ? (row.p50 - f.p50) * 1000 : (1 / row.perSecond - 1 / f.perSecond) * 1e6;
      return [
        row.setup,
        row.model,
        row.inFlight,
        fmt(row.perSecond, 0),
        fmt(row.p50, 2),
        fmt(row.p99, 2),
        row === f ? '1.00x (floor)' : ratio(f.perSecond, row.perSecond),
        row === f ? '0' : fmt(overhead, 0),
        `${runs}${row.spread ? ` (${row.spread})` : ''}${row.failed ? `, ${row.failed} FAILED` : ''}`,
        row.steps,
        target(row),
      ];
    }),
  );
}

/** Where the CPU goes at 64 in flight, and the rate the machine's cores would allow at that cost. */
function renderCpu(rows: OverheadRow[]): string {
  const measured = rows.filter((r) => r.cpu && r.inFlight === IN_FLIGHT);
  const cores = cpus().length;
  return (
    `CPU per microtask at ${IN_FLIGHT} in flight (µs, by process; from process.cpuUsage and /proc):\n\n` +
    table(
      ['setup', 'model', 'daemon + client', 'worker', 'nats-server', 'total', `rate if CPU-bound on ${cores} cores`, 'measured rate'],
      measured.map((r) => {
        const total = Object.values(r.cpu!).reduce((a, b) => a + (Number.isFinite(b) ? b : 0), 0);
        return [
          r.setup,
          r.model,
          fmt(r.cpu!['daemon + client'] ?? NaN, 0),
          fmt(r.cpu!.worker ?? NaN, 0),
          fmt(r.cpu!['nats-server'] ?? NaN, 0),
          fmt(total, 0),
          `${fmt((cores * 1e6) / total, 0)}/s`,
          `${fmt(r.perSecond, 0)}/s`,
        ];
      }),
    )
  );
}

if (import.meta.url === pathToFileURL(process.argv[1]!).href) {
  const { markdown } = await runOverhead({ sdk: !args.includes('--no-sdk') });
  console.log(`\n## 1. Overhead per microtask (median of ${runs} runs)\n\n${markdown}`);
  process.exit(stepProblems.length ? 1 : 0);
}
