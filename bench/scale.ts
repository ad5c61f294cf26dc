/**
 * Part 3: scale. 10,000 feedback-loop flows in one daemon process, each waiting on a
 * model that takes ten minutes: the daemon's peak memory (RSS); then SIGKILL, and the
 * time a new daemon process takes to resume all of them. File store (embedded) and NATS
 * KV (with leases; the restarted daemon keeps its MICROTASK_DAEMON_ID).
 *
 *   npx tsx bench/scale.ts [--quick] [--flows N] [--only file|nats]
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { startNatsServer } from '../src/testing/natsServer.js';
import { flag, fmt, met, note, quick, table } from './lib.js';

interface Started {
  flows: number;
  startedMs: number;
  saves: number;
  idleCpuPercent: number;
  rssMB: number;
  heapUsedMB: number;
  peakRssMB: number;
}
interface Resumed {
  resumed: number;
  failed: number;
  resumeMs: number;
  sinceBootMs: number;
  rssMB: number;
  peakRssMB: number;
}

function daemon(env: Record<string, string>): { child: ChildProcess; next: (phase: string) => Promise<Record<string, number>> } {
  const child = spawn(process.execPath, ['--expose-gc', '--import', 'tsx', new URL('./scaleDaemon.ts', import.meta.url).pathname], {
    env: { PATH: process.env.PATH ?? '', ...env },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  let buffer = '';
  const lines: Array<Record<string, number> & { phase?: string }> = [];
  const waiters: Array<() => void> = [];
  child.stdout!.on('data', (chunk: Buffer) => {
    buffer += chunk.toString();
    let i;
    while ((i = buffer.indexOf('\n')) >= 0) {
      lines.push(JSON.parse(buffer.slice(0, i)));
      buffer = buffer.slice(i + 1);
      waiters.splice(0).forEach((w) => w());
    }
  });
  const next = async (phase: string) => {
    for (;;) {
      const found = lines.find((l) => (l as { phase?: string }).phase === phase);
      if (found) return found;
      if (child.exitCode !== null) throw new Error(`the scale daemon exited with ${child.exitCode} before "${phase}"`);
      await new Promise<void>((resolve) => {
        waiters.push(resolve);
        child.once('exit', () => resolve());
      });
    }
  };
  return { child, next };
}

async function kill(child: ChildProcess) {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGKILL');
  await exited;
}

export interface ScaleRow {
  store: string;
  started: Started;
  resumed: Resumed;
  killToResumedMs: number;
}

async function scaleOnce(mode: 'file' | 'nats', count: number): Promise<ScaleRow> {
  const dir = await mkdtemp(join(tmpdir(), 'bench-scale-'));
  const nats = mode === 'nats' ? await startNatsServer() : undefined;
  const env = { SCALE_MODE: mode, SCALE_COUNT: String(count), SCALE_DIR: dir, ...(nats ? { NATS_URL: nats.url } : {}) };
  try {
    note(`scale (${mode}): starting ${count} flows in one daemon`);
    const first = daemon({ ...env, SCALE_PHASE: 'start' });
    const started = (await first.next('started')) as unknown as Started;
    note(`scale (${mode}): ${count} flows waiting, RSS ${fmt(started.rssMB, 0)} MB; SIGKILL`);
    const killedAt = performance.now();
    await kill(first.child);
    const second = daemon({ ...env, SCALE_PHASE: 'resume' });
    const resumed = (await second.next('resumed')) as unknown as Resumed;
    const killToResumedMs = performance.now() - killedAt;
    await kill(second.child);
    note(`scale (${mode}): ${resumed.resumed} resumed in ${fmt(resumed.resumeMs, 0)} ms`);
    return { store: mode === 'nats' ? 'NATS KV (leases)' : 'lmdb (embedded)', started, resumed, killToResumedMs };
  } finally {
    await nats?.close();
    await rm(dir, { recursive: true, force: true });
  }
}

export async function runScale(): Promise<{ rows: ScaleRow[]; markdown: string }> {
  const count = Number(flag('flows') ?? (quick ? 2_000 : 10_000));
  const only = flag('only');
  const rows: ScaleRow[] = [];
  for (const mode of ['file', 'nats'] as const) if (!only || only === mode) rows.push(await scaleOnce(mode, count));
  const markdown = table(
    [
      'store',
      'waiting flows',
      'time to start them s',
      'saves',
      'RSS MB (all waiting)',
      'peak RSS MB',
      'heap MB',
      'CPU while all wait (% of a core)',
      'resumeAll s',
      'resumed / failed',
      'SIGKILL → all resumed s (incl. process start)',
      'target (<1 GB; all resumed <5 s)',
    ],
    rows.map((r) => [
      r.store,
      r.started.flows,
      fmt(r.started.startedMs / 1000, 1),
      r.started.saves,
      fmt(r.started.rssMB, 0),
      fmt(r.started.peakRssMB, 0),
      fmt(r.started.heapUsedMB, 0),
      fmt(r.started.idleCpuPercent, 0),
      fmt(r.resumed.resumeMs / 1000, 2),
      `${r.resumed.resumed} / ${r.resumed.failed}`,
      fmt(r.killToResumedMs / 1000, 2),
      `memory ${met(r.started.peakRssMB < 1024)}, resume ${met(r.resumed.resumeMs < 5_000 && r.resumed.resumed === r.started.flows)}`,
    ]),
  );
  return { rows, markdown };
}

if (import.meta.url === pathToFileURL(process.argv[1]!).href) {
  const { markdown } = await runScale();
  console.log(`\n## 3. Scale: waiting flows in one daemon, SIGKILL, resume\n\n${markdown}`);
  process.exit(0);
}
