/**
 * Part 6: what flows waiting for a person cost their daemon (issue 14 item 5, issue 15
 * item 2). N re-entrant flows whose review is a person's, all waiting, in one daemon
 * process: over a quiet window, the messages its connection sends to nats-server and gets
 * from it per second (the server's monitoring endpoint), the daemon's CPU (its /proc
 * times) and RSS; then SIGKILL, and the time a new daemon (same MICROTASK_DAEMON_ID)
 * takes to resume them all. Over NATS (with leases; the worker in a process of its own)
 * and embedded (lmdb, no leases).
 *
 * `--before <dir>`: the same in another checkout of this repository (built, with
 * node_modules), in the same run, for a before/after (a ratio each).
 *
 * The window is one lease (MICROTASK_LEASE_MS, 30 s by default: `--lease-ms`): renewals
 * and scans happen every third of it.
 *
 *   npx tsx bench/waitingFlows.ts [--quick] [--flows N] [--lease-ms MS] [--window-s S] [--store nats|embedded] [--before DIR]
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { startFakeAnthropic } from '../src/testing/fakeAnthropic.js';
import { freePort, startNatsServer } from '../src/testing/natsServer.js';
import { handWrittenReplies } from '../test/support/handWrittenModel.js';
import { flag, fmt, met, note, quick, sleep, table } from './lib.js';

export interface WaitingRow {
  tree: string;
  mode: 'nats' | 'embedded';
  flows: number;
  startS: number;
  windowS: number;
  sentPerS: number;
  receivedPerS: number;
  cpuPercent: number;
  rssMB: number;
  anonMB: number;
  /** The resumed daemon's, 3 s after its resume: the flows it holds were never awake in it. */
  resumedRssMB: number;
  resumedAnonMB: number;
  resumeS: number;
  killToResumedS: number;
}

const here = fileURLToPath(new URL('..', import.meta.url));

function child(tree: string, script: string[], env: Record<string, string>, stdout: boolean) {
  const proc = spawn(process.execPath, script, { cwd: tree, env: { PATH: process.env.PATH ?? '', ...env }, stdio: ['ignore', stdout ? 'pipe' : 'ignore', 'inherit'] });
  let buffer = '';
  const lines: Array<Record<string, unknown>> = [];
  proc.stdout?.on('data', (chunk: Buffer) => {
    buffer += chunk.toString();
    let i;
    while ((i = buffer.indexOf('\n')) >= 0) {
      const line = buffer.slice(0, i);
      buffer = buffer.slice(i + 1);
      try {
        lines.push(JSON.parse(line));
      } catch {
        // not ours
      }
    }
  });
  const next = async (phase: string) => {
    for (;;) {
      const found = lines.find((l) => l.phase === phase);
      if (found) return found as Record<string, number>;
      if (proc.exitCode !== null) throw new Error(`the bench daemon exited with ${proc.exitCode} before "${phase}"`);
      await sleep(100);
    }
  };
  return { proc, next };
}

async function kill(proc: ChildProcess) {
  if (proc.exitCode !== null || proc.signalCode !== null) return;
  const exited = new Promise((resolve) => proc.once('exit', resolve));
  proc.kill('SIGKILL');
  await exited;
}

/**
 * utime + stime of a process, in ms (Linux /proc), its RSS in MB, and the anonymous part of
 * it (the heap and native allocations; the rest is files mapped, such as lmdb's database,
 * which the kernel reclaims as page cache).
 */
async function procStats(pid: number) {
  const stat = (await readFile(`/proc/${pid}/stat`, 'utf8')).split(') ')[1]!.split(' ');
  const ticks = Number(stat[11]) + Number(stat[12]);
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const rssKB = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0);
  const anonKB = Number(/RssAnon:\s+(\d+)/.exec(status)?.[1] ?? 0);
  return { cpuMs: (ticks * 1000) / 100, rssMB: rssKB / 1024, anonMB: anonKB / 1024 };
}

async function connCounts(monitorPort: number) {
  const connz = (await (await fetch(`http://127.0.0.1:${monitorPort}/connz?limit=1024`)).json()) as {
    connections: { name?: string; in_msgs: number; out_msgs: number }[];
  };
  const c = connz.connections.find((x) => x.name?.startsWith('microtask-daemon@'));
  if (!c) throw new Error("no daemon connection on the bench's nats-server");
  return { sent: c.in_msgs, received: c.out_msgs };
}

export async function waitingOnce(tree: string, mode: 'nats' | 'embedded', flows: number, windowS: number, leaseMs: number): Promise<WaitingRow> {
  const label = tree === here ? 'this tree' : tree;
  const state = await mkdtemp(join(tmpdir(), 'bench-waiting-'));
  const monitorPort = await freePort();
  const nats = mode === 'nats' ? await startNatsServer({ args: ['-m', String(monitorPort)] }) : undefined;
  const model = await startFakeAnthropic({ replies: handWrittenReplies(0) });
  const env: Record<string, string> = {
    ANTHROPIC_API_KEY: 'sk-bench',
    ANTHROPIC_BASE_URL: model.url,
    MICROTASK_STATE_DIR: state,
    MICROTASK_LOG_LEVEL: 'warn',
    MICROTASK_DAEMON_ID: 'bench-waiting-daemon',
    MICROTASK_LEASE_MS: String(leaseMs),
    // Starting 100,000 flows queues their first microtasks faster than one worker answers
    // them: a task that waits in the queue past its deadline falls back, and the flow fails.
    // What is measured is the wait, so the deadline is the longest a microtask may have.
    MICROTASK_TIMEOUT_MS: '600000',
    WAIT_COUNT: String(flows),
    ...(nats ? { NATS_URL: nats.url } : {}),
  };
  const script = ['--import', 'tsx', join(tree, 'bench/waitingFlowsDaemon.ts')];
  const procs: ChildProcess[] = [];
  try {
    if (nats) procs.push(child(tree, [join(tree, 'dist/cli.js'), 'worker'], env, false).proc);
    note(`waiting flows (${mode}, ${label}): starting ${flows} flows that wait for a person`);
    const first = child(tree, script, { ...env, WAIT_PHASE: 'start' }, true);
    procs.push(first.proc);
    const waiting = await first.next('waiting');
    if (Number(waiting.ended ?? 0) > 0) note(`waiting flows (${mode}, ${label}): ${waiting.ended} of ${flows} ended before waiting (their first microtask timed out in the queue)`);
    await sleep(3_000);
    note(`waiting flows (${mode}, ${label}): ${flows} waiting; measuring ${windowS} s`);
    const pid = first.proc.pid!;
    const before = nats ? await connCounts(monitorPort) : { sent: 0, received: 0 };
    const cpuBefore = await procStats(pid);
    const began = performance.now();
    await sleep(windowS * 1000);
    const cpuAfter = await procStats(pid);
    const elapsedS = (performance.now() - began) / 1000;
    const after = nats ? await connCounts(monitorPort) : { sent: 0, received: 0 };
    const killedAt = performance.now();
    await kill(first.proc);
    const second = child(tree, script, { ...env, WAIT_PHASE: 'resume' }, true);
    procs.push(second.proc);
    const resumed = await second.next('resumed');
    const killToResumedS = (performance.now() - killedAt) / 1000;
    // An older tree's daemon script counted before it said resumed.
    const counted = resumed.waiting !== undefined ? resumed : await second.next('counted');
    note(`waiting flows (${mode}, ${label}): all resumed ${fmt(killToResumedS, 1)} s after SIGKILL; ${counted.waiting} of them waiting`);
    if (counted.waiting !== Number(waiting.flows ?? flows)) throw new Error(`after the resume ${counted.waiting} flows wait, not ${waiting.flows ?? flows}`);
    await sleep(3_000);
    const resumedStats = await procStats(second.proc.pid!);
    return {
      tree: label,
      mode,
      // The flows that wait (any that ended instead are said in the log).
      flows: Number(waiting.flows ?? flows),
      startS: waiting.startMs! / 1000,
      windowS: elapsedS,
      sentPerS: (after.sent - before.sent) / elapsedS,
      receivedPerS: (after.received - before.received) / elapsedS,
      cpuPercent: ((cpuAfter.cpuMs - cpuBefore.cpuMs) / (elapsedS * 1000)) * 100,
      rssMB: cpuAfter.rssMB,
      anonMB: cpuAfter.anonMB,
      resumedRssMB: resumedStats.rssMB,
      resumedAnonMB: resumedStats.anonMB,
      resumeS: resumed.startMs! / 1000,
      killToResumedS,
    };
  } finally {
    for (const p of procs) await kill(p);
    await nats?.close();
    await model.close();
    await rm(state, { recursive: true, force: true });
  }
}

export async function runWaitingFlows(): Promise<{ rows: WaitingRow[]; markdown: string }> {
  const flows = Number(flag('flows') ?? (quick ? 2_000 : 10_000));
  const leaseMs = Number(flag('lease-ms') ?? 30_000);
  const windowS = Number(flag('window-s') ?? leaseMs / 1000);
  const only = flag('store');
  const beforeTree = flag('before');
  const rows: WaitingRow[] = [];
  for (const mode of ['nats', 'embedded'] as const) {
    if (only && only !== mode) continue;
    if (beforeTree) rows.push(await waitingOnce(beforeTree, mode, flows, windowS, leaseMs));
    rows.push(await waitingOnce(here, mode, flows, windowS, leaseMs));
  }
  const ratio = (row: WaitingRow, pick: (r: WaitingRow) => number) => {
    const base = rows.find((r) => r.mode === row.mode && r.tree !== row.tree && r.tree !== 'this tree');
    return base && row.tree === 'this tree' && pick(row) > 0 ? ` (before ÷ after ${fmt(pick(base) / pick(row), 1)})` : '';
  };
  const markdown = table(
    ['tree', 'store', 'waiting flows', 'time to start them s', 'daemon → NATS msgs/s', 'NATS → daemon msgs/s', 'daemon CPU (% of a core)', 'RSS MB (anonymous)', 'resumed daemon RSS MB (anonymous)', 'resumeAll s', 'SIGKILL → all resumed s', 'target (<100 NATS ops/s, <1% of a core)'],
    rows.map((r) => [
      r.tree,
      r.mode === 'nats' ? 'NATS KV (leases)' : 'lmdb (embedded)',
      r.flows,
      fmt(r.startS, 1),
      r.mode === 'nats' ? fmt(r.sentPerS, 1) + ratio(r, (x) => x.sentPerS) : '–',
      r.mode === 'nats' ? fmt(r.receivedPerS, 1) + ratio(r, (x) => x.receivedPerS) : '–',
      fmt(r.cpuPercent, 2) + ratio(r, (x) => x.cpuPercent),
      `${fmt(r.rssMB, 0)} (${fmt(r.anonMB, 0)})`,
      `${fmt(r.resumedRssMB, 0)} (${fmt(r.resumedAnonMB, 0)})`,
      fmt(r.resumeS, 2),
      fmt(r.killToResumedS, 2),
      `ops ${met(r.sentPerS + r.receivedPerS < 100)}, CPU ${met(r.cpuPercent < 1)}`,
    ]),
  );
  return { rows, markdown };
}

if (import.meta.url === pathToFileURL(process.argv[1]!).href) {
  const { markdown } = await runWaitingFlows();
  console.log(`\n## 6. Flows waiting for a person, in one daemon process: idle cost; SIGKILL; resume\n\n${markdown}`);
  process.exit(0);
}
