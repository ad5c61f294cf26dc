import { spawn } from 'node:child_process';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { LmdbSnapshotStore } from '../src/persistence/LmdbSnapshotStore.js';
import { LmdbStore } from '../src/persistence/LmdbStore.js';
import { reply, startFakeAnthropic } from '../src/testing/fakeAnthropic.js';

// Issue 12: embedded `microtask resume` run by two processes at once on one state directory
// (the lmdb database): their saves compare-and-set across the processes, so one runs the
// flow to its end and the other stops at its first save, never both.
const CLI = new URL('../dist/cli.js', import.meta.url).pathname;
const cwd = new URL('..', import.meta.url).pathname;

function cli(args: string[], env: Record<string, string>) {
  const child = spawn(process.execPath, [CLI, ...args], { env: { PATH: process.env.PATH ?? '', NO_COLOR: '1', ...env }, cwd });
  let out = '';
  let err = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (err += d));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  return { child, exited, stdout: () => out, stderr: () => err };
}

describe('embedded resume from two processes at once', () => {
  it('one runs the flow to its end, the other stops at its first save; the record ends done once', async () => {
    await using model = await startFakeAnthropic({ replies: () => reply.text('an answer', { delayMs: 1_500 }) });
    const env = { MICROTASK_STATE_DIR: await mkdtemp(join(tmpdir(), 'resume-race-')), ANTHROPIC_API_KEY: 'sk-test', ANTHROPIC_BASE_URL: model.url, MICROTASK_MAX_RETRIES: '0' };
    // A flow saved and left unfinished: started, then killed while its calls are in flight.
    const first = cli(['run', 'parallel', '--input', 'examples/parallel.json', '--no-progress', '--json'], env);
    const db = await LmdbStore.open(env.MICROTASK_STATE_DIR);
    const store = await LmdbSnapshotStore.open(db);
    const deadline = Date.now() + 20_000;
    let flows = await store.list({ status: 'running' });
    while (!flows.length && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 50));
      flows = await store.list({ status: 'running' });
    }
    first.child.kill('SIGKILL');
    await first.exited;
    const flowId = flows[0]!.flowId;

    const [a, b] = [cli(['resume', flowId, '--json', '--no-progress'], env), cli(['resume', flowId, '--json', '--no-progress'], env)];
    const codes = await Promise.all([a.exited, b.exited]);
    const outputs = [a, b].map((r) => r.stdout());
    const winners = codes.filter((c) => c === 0).length;
    expect(winners, `exit codes ${codes.join(', ')}\n${a.stderr()}\n${b.stderr()}`).toBe(1);
    const won = JSON.parse(outputs[codes.indexOf(0)]!);
    expect(won).toMatchObject({ flowId, status: 'done' });
    const stored = (await store.load(flowId))!;
    expect(stored.record.status).toBe('done');
    // Every step of the flow once, numbered without a gap, whichever process saved it.
    const steps = (await store.readSteps(flowId)).map((s) => s.step);
    expect(steps).toEqual(Array.from({ length: steps.length }, (_, i) => i + 1));
    expect(stored.record.steps).toBe(steps.length);
    await db.close();
  }, 60_000);
});
