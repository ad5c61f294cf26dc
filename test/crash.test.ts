import { execFile, spawn } from 'node:child_process';
import { mkdtemp, readFile } from 'node:fs/promises';
import { connect } from '@nats-io/transport-node';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { LmdbJournal } from '../src/journal/LmdbJournal.js';
import { LmdbSnapshotStore } from '../src/persistence/LmdbSnapshotStore.js';
import { LmdbStore } from '../src/persistence/LmdbStore.js';
import { startFakeAnthropic } from '../src/testing/fakeAnthropic.js';
import { startNatsServer } from '../src/testing/natsServer.js';
import { handWrittenReplies } from './support/handWrittenModel.js';

// `microtask build` as a user runs it (the built CLI, embedded mode, snapshots and results
// under MICROTASK_STATE_DIR), killed with SIGKILL at random points and resumed each time.
const CLI = new URL('../dist/cli.js', import.meta.url).pathname;
const ROOT = new URL('..', import.meta.url).pathname;
const KILLS = Number(process.env.CRASH_KILLS ?? 20);
const STORE_WINDOW_MS = 100;
const SEED = Number(process.env.CRASH_SEED ?? Date.now() % 100_000);

function cli(args: string[], env: Record<string, string>) {
  return spawn(process.execPath, [CLI, ...args], { env: { PATH: process.env.PATH ?? '', ...env }, cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
}

/** A small seeded generator, so a failing run can be replayed with CRASH_SEED. */
function random(seed: number) {
  let state = seed >>> 0 || 1;
  return () => {
    state = (Math.imul(state, 1_664_525) + 1_013_904_223) >>> 0;
    return state / 2 ** 32;
  };
}

// Only where the tool went and the flow id may differ.
const comparable = (output: Record<string, unknown>) => ({ ...output, dir: undefined, flowId: undefined });

describe(`a build killed ${KILLS} times (seed ${SEED}; replay with CRASH_SEED=${SEED})`, () => {
  it('finishes with the output of an uninterrupted run, paying only for the calls in flight at each kill', async () => {
    await using server = await startFakeAnthropic({ replies: handWrittenReplies(60) });
    const base = { ANTHROPIC_API_KEY: 'sk-test', ANTHROPIC_BASE_URL: server.url, MICROTASK_LOG_LEVEL: 'silent' };

    const clean = await promisify(execFile)(
      process.execPath,
      [CLI, 'build', 'examples/api-tester.json', '--json', '--no-progress', '--out', await mkdtemp(join(tmpdir(), 'crash-out-'))],
      { env: { PATH: process.env.PATH ?? '', ...base, MICROTASK_STATE_DIR: await mkdtemp(join(tmpdir(), 'crash-clean-')) }, cwd: ROOT },
    );
    const expected = JSON.parse(clean.stdout);
    expect(expected.status).toBe('done');
    const cleanCalls = server.requests.length;

    const env = { ...base, MICROTASK_STATE_DIR: await mkdtemp(join(tmpdir(), 'crash-state-')) };
    const out = await mkdtemp(join(tmpdir(), 'crash-out-'));
    const next = random(SEED);
    const before = server.requests.length;
    let flowId: string | undefined;
    const kills: number[] = [];
    const killedAt: number[] = [];
    for (let kill = 0; kill < KILLS; kill++) {
      const child = flowId
        ? cli(['resume', flowId, '--json', '--no-progress'], env)
        : cli(['build', 'examples/api-tester.json', '--json', '--no-progress', '--out', out], env);
      const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
      // From start-up (~0.5 s) to well into the flow.
      const delay = 300 + Math.floor(next() * 1_500);
      const finishedFirst = await Promise.race([exited.then(() => true), new Promise<false>((r) => setTimeout(() => r(false), delay))]);
      if (finishedFirst) break;
      child.kill('SIGKILL');
      killedAt.push(Date.now());
      await exited;
      kills.push(delay);
      if (!flowId) {
        const flows = await promisify(execFile)(process.execPath, [CLI, 'flows', '--json'], { env: { PATH: process.env.PATH ?? '', ...env }, cwd: ROOT });
        flowId = (JSON.parse(flows.stdout) as Array<{ flowId: string }>)[0]?.flowId;
      }
    }
    const final = flowId
      ? await promisify(execFile)(process.execPath, [CLI, 'resume', flowId, '--json', '--no-progress'], { env: { PATH: process.env.PATH ?? '', ...env }, cwd: ROOT })
      : await promisify(execFile)(process.execPath, [CLI, 'build', 'examples/api-tester.json', '--json', '--no-progress', '--out', out], {
          env: { PATH: process.env.PATH ?? '', ...env },
          cwd: ROOT,
        });
    const output = JSON.parse(final.stdout);
    const context = `seed ${SEED}, kills after ${kills.join(', ')} ms`;
    expect(comparable(output), context).toEqual(comparable(expected));

    const requests = server.requests.slice(before);
    // In flight at a kill: asked before it, and not answered, or answered so shortly before
    // that the process could not have stored the result yet (parse, validate, fsync).
    const inFlightAtKills = requests.filter((r) =>
      killedAt.some((at) => r.receivedAt <= at && (r.answeredAt === undefined || r.answeredAt > at - STORE_WINDOW_MS)),
    ).length;
    expect(requests.length, context).toBeLessThanOrEqual(cleanCalls + inFlightAtKills);
    expect(kills.length, context).toBeGreaterThan(0);

    // Every step saved across the kills, numbered 1..N without a gap: in the store (saved with
    // the record that made each durable) and in the journal (a step saved but not journaled
    // before a kill is read back from the store).
    flowId ??= output.flowId as string;
    const db = await LmdbStore.open(env.MICROTASK_STATE_DIR);
    try {
      const store = await LmdbSnapshotStore.open(db);
      const stored = (await store.load(flowId!))!;
      const steps = (await store.readSteps(flowId!)).map((s) => s.step);
      const oneToN = Array.from({ length: stored.record.steps ?? 0 }, (_, i) => i + 1);
      expect(steps.length, context).toBeGreaterThan(0);
      expect(steps, context).toEqual(oneToN);
      const journal = new LmdbJournal(await LmdbStore.open(env.MICROTASK_STATE_DIR));
      const journaled = (await journal.read(flowId!)).flatMap((e) => (e.kind === 'step' ? [e.step] : []));
      await journal.close();
      expect(journaled, context).toEqual(oneToN);
    } finally {
      await db.close();
    }
  }, 240_000);
});

describe(`a daemon over NATS killed ${KILLS} times during a tool build (seed ${SEED}; replay with CRASH_SEED=${SEED})`, () => {
  it('resumes the flow on each restart; it finishes with the uninterrupted output, paying only for calls in flight', async () => {
    await using nats = await startNatsServer();
    await using server = await startFakeAnthropic({ replies: handWrittenReplies(60) });
    const spec = JSON.parse(await readFile(join(ROOT, 'examples/api-tester.json'), 'utf8'));
    const client = await connect({ servers: nats.url });
    const env = (prefix: string, state: string) => ({
      ANTHROPIC_API_KEY: 'sk-test',
      ANTHROPIC_BASE_URL: server.url,
      MICROTASK_LOG_LEVEL: 'silent',
      NATS_URL: nats.url,
      // One name across restarts: the restarted daemon's leases are its own.
      MICROTASK_DAEMON_ID: `crash-${prefix}`,
      MICROTASK_ACK_WAIT_MS: '1000',
      MICROTASK_SUBJECT_PREFIX: prefix,
      MICROTASK_STATE_DIR: state,
      // A daemon refuses a taken inspector port: never the default one another test may hold.
      MICROTASK_INSPECTOR_PORT: '0',
    });
    /** Starts a daemon and (re)sends the build request: the same requestId is the same flow. */
    const startAndRequest = async (prefix: string, state: string) => {
      const child = cli(['daemon', '--worker'], env(prefix, state));
      let answer: any;
      for (let i = 0; i < 200 && !answer?.ok; i++) {
        answer = await client
          .request(`${prefix}.toolbuild.request`, JSON.stringify({ ...spec, requestId: `build-${prefix}` }), { timeout: 2_000 })
          .then((m) => m.json<any>())
          .catch(() => undefined);
        if (!answer?.ok) await new Promise((r) => setTimeout(r, 50));
      }
      return { child, flowId: answer?.flowId as string };
    };
    const statusOf = (prefix: string, flowId: string) =>
      client
        .request(`${prefix}.flow.get`, JSON.stringify({ flowId }), { timeout: 2_000 })
        .then((m) => m.json<any>())
        .catch(() => undefined);
    const untilDone = async (prefix: string, flowId: string) => {
      for (let i = 0; i < 1_200; i++) {
        const status = await statusOf(prefix, flowId);
        if (status?.status && status.status !== 'running') return status;
        await new Promise((r) => setTimeout(r, 100));
      }
      throw new Error(`flow ${flowId} did not finish`);
    };

    const clean = await startAndRequest('clean', await mkdtemp(join(tmpdir(), 'dcrash-clean-')));
    const expected = await untilDone('clean', clean.flowId);
    clean.child.kill('SIGKILL');
    expect(expected.output.status).toBe('done');
    const cleanCalls = server.requests.length;

    const state = await mkdtemp(join(tmpdir(), 'dcrash-'));
    const next = random(SEED + 1);
    const before = server.requests.length;
    const killedAt: number[] = [];
    const kills: number[] = [];
    let flowId = '';
    for (let kill = 0; kill < KILLS; kill++) {
      const started = await startAndRequest('crash', state);
      flowId = started.flowId;
      const exited = new Promise<void>((resolve) => started.child.once('exit', () => resolve()));
      const delay = 100 + Math.floor(next() * 1_200);
      await new Promise((r) => setTimeout(r, delay));
      const status = await statusOf('crash', flowId);
      started.child.kill('SIGKILL');
      killedAt.push(Date.now());
      kills.push(delay);
      await exited;
      if (status?.status === 'done') break;
    }
    const last = await startAndRequest('crash', state);
    const output = await untilDone('crash', last.flowId);
    last.child.kill('SIGKILL');
    await client.close();

    const context = `seed ${SEED + 1}, kills ${kills.join(', ')} ms after the request`;
    expect(last.flowId, context).toBe(flowId);
    expect(comparable(output.output), context).toEqual(comparable(expected.output));
    const requests = server.requests.slice(before);
    const inFlightAtKills = requests.filter((r) =>
      killedAt.some((at) => r.receivedAt <= at && (r.answeredAt === undefined || r.answeredAt > at - STORE_WINDOW_MS)),
    ).length;
    expect(requests.length, context).toBeLessThanOrEqual(cleanCalls + inFlightAtKills);
  }, 300_000);
});
