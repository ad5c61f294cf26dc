/**
 * What the benchmark parts share: the instant model, the inputs, a pool that keeps N
 * flows in flight, statistics and tables.
 */
import { ModelError } from '../src/actors/model/ModelError.js';
import { ScriptedModel, type ScriptedAnswer } from '../src/actors/model/ScriptedModel.js';
import type { ModelRequest } from '../src/actors/model/ModelPort.js';
import { reply, startFakeAnthropic, type FakeAnthropic, type FakeRequest } from '../src/testing/fakeAnthropic.js';

export const args = process.argv.slice(2);
export const quick = args.includes('--quick');
/** Runs of each measurement; every figure is their median. */
export const runs = Number(flag('runs') ?? (quick ? 1 : 3));

export function flag(name: string): string | undefined {
  const i = args.indexOf(`--${name}`);
  if (i >= 0 && args[i + 1] && !args[i + 1]!.startsWith('--')) return args[i + 1];
  const eq = args.find((a) => a.startsWith(`--${name}=`));
  return eq?.slice(name.length + 3);
}

// -- the instant model ------------------------------------------------------------

/** The n of the last `draft n` in a text (0 when none). */
const draftNumber = (text: string) => {
  const all = [...text.matchAll(/draft (\d+)/g)];
  return all.length ? Number(all[all.length - 1]![1]) : 0;
};

/**
 * How the benchmark's model answers, the same in every setup: a microtask gets `ok`; the
 * feedback loop's generator writes `draft n` (n one more than the attempt it revises) and
 * its verifier scores `draft 3` at 0.9, earlier drafts at 0.5, so every loop runs exactly
 * three rounds (generate → verify → revise → verify → revise → verify).
 */
export function answerFor(request: { schemaName?: string | undefined; prompt: string; data?: unknown }): ScriptedAnswer {
  if (request.schemaName === 'verdict') {
    const n = draftNumber(JSON.stringify((request.data as { output?: unknown } | undefined)?.output ?? ''));
    return { value: { score: n >= 3 ? 0.9 : 0.5, feedback: n >= 3 ? 'good' : 'more detail' } };
  }
  if (/draft|Write/.test(request.prompt)) return { text: `draft ${draftNumber(request.prompt) + 1}` };
  return { text: 'ok' };
}

/** An instant model (no delay), or one that takes `delayMs` to answer. */
export function benchModel(delayMs = 0): ScriptedModel {
  return new ScriptedModel((request: ModelRequest<unknown>) => {
    const answer = answerFor(request);
    return delayMs && typeof answer === 'object' && !(answer instanceof ModelError) ? { ...answer, delayMs } : answer;
  });
}

/** The same answers from a local Anthropic-compatible server, for the real SDK. */
export function startBenchAnthropic(): Promise<FakeAnthropic> {
  return startFakeAnthropic({
    replies: (request: FakeRequest) => {
      const tool = request.body.tools?.[0];
      const text = request.lastUserText;
      if (tool) {
        const data = text.match(/draft (\d+)/g);
        const answer = answerFor({ schemaName: tool.name, prompt: '', data: { output: data?.join(' ') ?? '' } });
        return reply.tool(tool.name, (answer as { value: unknown }).value, { usage: { input_tokens: 20, output_tokens: 10 } });
      }
      const answer = answerFor({ prompt: text });
      return reply.text((answer as { text: string }).text, { usage: { input_tokens: 20, output_tokens: 5 } });
    },
  });
}

// -- inputs -------------------------------------------------------------------------

/** One microtask (the `microtask` pattern). */
export const microtaskInput = { taskType: 'echo', system: 'Answer ok.', prompt: 'Say ok.' };

/** The feedback loop of every comparison: three rounds, then done. */
export const feedbackInput = {
  task: { taskType: 'write', system: 'You write.', prompt: 'Write a haiku about queues.' },
  verify: { taskType: 'judge', system: 'You judge.', prompt: 'Judge the haiku.', answer: 'verdict' },
  threshold: 0.8,
  maxIterations: 5,
};

// -- running N at a time ------------------------------------------------------------

export interface PoolResult {
  count: number;
  seconds: number;
  perSecond: number;
  latencies: number[];
  failed: number;
}

/** Runs `one` `total` times, `inFlight` at once; each run's latency is measured. */
export async function pool(total: number, inFlight: number, one: (i: number) => Promise<boolean | void>): Promise<PoolResult> {
  const latencies: number[] = [];
  let failed = 0;
  let next = 0;
  const began = performance.now();
  const lane = async () => {
    while (next < total) {
      const i = next++;
      const t0 = performance.now();
      const ok = await one(i);
      latencies.push(performance.now() - t0);
      if (ok === false) failed++;
    }
  };
  await Promise.all(Array.from({ length: Math.min(inFlight, total) }, lane));
  const seconds = (performance.now() - began) / 1000;
  latencies.sort((a, b) => a - b);
  return { count: total, seconds, perSecond: total / seconds, latencies, failed };
}

// -- statistics ---------------------------------------------------------------------

export function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

/** The p-th percentile of sorted values (nearest rank). */
export function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]!;
}

/** Per run: rate, p50, p99; the figures reported are the medians over runs. */
export function summarizeRuns(results: readonly PoolResult[]) {
  return {
    perSecond: median(results.map((r) => r.perSecond)),
    p50: median(results.map((r) => percentile(r.latencies, 50))),
    p99: median(results.map((r) => percentile(r.latencies, 99))),
    failed: results.reduce((n, r) => n + r.failed, 0),
    runs: results.length,
    spread: results.length > 1 ? `${fmt(Math.min(...results.map((r) => r.perSecond)), 0)}–${fmt(Math.max(...results.map((r) => r.perSecond)), 0)}` : '',
  };
}

// -- output -------------------------------------------------------------------------

export const fmt = (n: number, digits = 1) => (Number.isFinite(n) ? n.toFixed(digits) : '–');
export const ratio = (n: number, of: number) => (of > 0 && Number.isFinite(n) ? `${(n / of).toFixed(2)}x` : '–');
export const met = (ok: boolean) => (ok ? 'met' : 'MISSED');

/** A markdown table. */
export function table(headers: readonly string[], rows: ReadonlyArray<ReadonlyArray<string | number>>): string {
  const line = (cells: ReadonlyArray<string | number>) => `| ${cells.join(' | ')} |`;
  return [line(headers), line(headers.map(() => '---')), ...rows.map(line)].join('\n');
}

/** Progress on stderr, so stdout holds the tables only. */
export const note = (message: string) => process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${message}\n`);

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));
