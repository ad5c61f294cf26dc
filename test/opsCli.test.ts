import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { jetstream } from '@nats-io/jetstream';
import { connect } from '@nats-io/transport-node';
import { afterAll, describe, expect, it } from 'vitest';
import { reply, startFakeAnthropic } from '../src/testing/fakeAnthropic.js';
import { freePort, startNatsServer } from '../src/testing/natsServer.js';

// Issue 15 item 3 through the built bin (dist/cli.js), as a platform runs it: --http-port
// serves /healthz, /readyz and /metrics; a taken port is refused in one line (exit 2)
// before anything starts; /readyz turns 503 on SIGTERM while the process drains.
const CLI = new URL('../dist/cli.js', import.meta.url).pathname;
const tempDirs: string[] = [];
const children: ChildProcess[] = [];
afterAll(async () => {
  children.forEach((c) => c.exitCode === null && c.signalCode === null && c.kill('SIGKILL'));
  await Promise.all(tempDirs.map((dir) => rm(dir, { recursive: true, force: true })));
});

const stateDir = async () => {
  const dir = await mkdtemp(join(tmpdir(), 'ops-cli-'));
  tempDirs.push(dir);
  return dir;
};

const run = async (args: string[], env: Record<string, string> = {}) =>
  promisify(execFile)(process.execPath, [CLI, ...args], {
    env: { PATH: process.env.PATH ?? '', MICROTASK_STATE_DIR: await stateDir(), ...env },
    timeout: 20_000,
  }).then(
    ({ stderr }) => ({ code: 0 as number | null, stderr }),
    (e: { code: number | null; stderr: string }) => ({ code: e.code, stderr: e.stderr }),
  );

async function until<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 15_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const got = await probe().catch(() => undefined);
    if (got !== undefined) return got;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

describe('--http-port of microtask daemon and worker', () => {
  it('a taken port is refused in one line, exit 2, by the daemon and by the worker (flag and MICROTASK_HTTP_PORT)', async () => {
    const taken: Server = createServer();
    await new Promise<void>((resolve) => taken.listen(0, '127.0.0.1', resolve));
    const { port } = taken.address() as { port: number };
    const line = `microtask: port ${port} is taken (another daemon or worker serves /metrics there?): choose another with --http-port or MICROTASK_HTTP_PORT (0: any free port)\n`;
    try {
      // Refused before it connects: the NATS server named here does not exist.
      const daemon = await run(['daemon', '--no-inspector', '--http-port', String(port)], { NATS_URL: 'nats://127.0.0.1:1' });
      expect(daemon).toEqual({ code: 2, stderr: line });
      const worker = await run(['worker'], { NATS_URL: 'nats://127.0.0.1:1', MICROTASK_HTTP_PORT: String(port) });
      expect(worker).toEqual({ code: 2, stderr: line });
    } finally {
      taken.close();
    }
  }, 30_000);

  it('a worker answers /healthz and /readyz, and turns not ready at SIGTERM while its task in flight finishes', async () => {
    await using nats = await startNatsServer();
    await using model = await startFakeAnthropic({ replies: () => reply.text('an answer', { delayMs: 2_000 }) });
    const port = await freePort();
    const worker = spawn(process.execPath, [CLI, 'worker', '--http-port', String(port)], {
      env: {
        PATH: process.env.PATH ?? '',
        NATS_URL: nats.url,
        ANTHROPIC_API_KEY: 'sk-test',
        ANTHROPIC_BASE_URL: model.url,
        MICROTASK_STATE_DIR: await stateDir(),
        MICROTASK_LOG_LEVEL: 'warn',
      },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    children.push(worker);
    let stderr = '';
    worker.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    const exited = new Promise<number | null>((resolve) => worker.once('exit', (code) => resolve(code)));
    const url = `http://127.0.0.1:${port}`;
    await until('/readyz to be 200', async () => ((await fetch(`${url}/readyz`)).status === 200 ? true : undefined));
    expect(await (await fetch(`${url}/healthz`)).text()).toBe('ok\n');

    // A task as a daemon enqueues it; the model takes 2 s to answer.
    const nc = await connect({ servers: nats.url });
    const task = { taskType: 'summarize', key: 'ops-cli-1/summarize/0', system: 'Summarize.', prompt: 'Summarize this.', deadlineAt: Date.now() + 30_000 };
    await jetstream(nc).publish('microtask.wq.tasks', JSON.stringify(task), { msgID: task.key });
    await until('the model call to start', async () => (model.requests.length > 0 ? true : undefined));

    worker.kill('SIGTERM');
    const draining = await until('/readyz to turn 503', async () => {
      const response = await fetch(`${url}/readyz`);
      return response.status === 503 ? ((await response.json()) as { checks: Array<{ name: string; ok: boolean }> }) : undefined;
    });
    expect(draining.checks[0]).toMatchObject({ name: 'draining', ok: false });
    expect(await exited).toBe(0);
    expect(stderr).toBe('');
    await nc.close();
  }, 30_000);

  it('the daemon serves the same routes beside its inspector page, its metrics named and typed', async () => {
    await using nats = await startNatsServer();
    const port = await freePort();
    const daemon = spawn(process.execPath, [CLI, 'daemon', '--inspector-port', '0', '--http-port', String(port)], {
      env: { PATH: process.env.PATH ?? '', NATS_URL: nats.url, MICROTASK_STATE_DIR: await stateDir(), MICROTASK_LOG_LEVEL: 'warn' },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    children.push(daemon);
    const url = `http://127.0.0.1:${port}`;
    await until('/readyz to be 200', async () => ((await fetch(`${url}/readyz`)).status === 200 ? true : undefined));
    const metrics = await (await fetch(`${url}/metrics`)).text();
    expect(metrics).toMatch(/^# HELP microtask_flows_started_total /m);
    expect(metrics).toMatch(/^# TYPE microtask_model_call_duration_seconds histogram$/m);
    daemon.kill('SIGTERM');
    expect(await new Promise((resolve) => daemon.once('exit', resolve))).toBe(0);
  }, 30_000);
});
