import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { jetstream } from '@nats-io/jetstream';
import { connect } from '@nats-io/transport-node';
import { afterAll, describe, expect, it } from 'vitest';

// Issue 16, item 2: `microtask dev` through the built bin, as a newcomer runs it, driven by
// a plain NATS client that knows only docs/protocol.md.
const ROOT = new URL('..', import.meta.url).pathname;
const CLI = join(ROOT, 'dist/cli.js');
const children: ChildProcess[] = [];
const tempDirs: string[] = [];
afterAll(async () => {
  children.forEach((c) => c.exitCode === null && c.signalCode === null && c.kill('SIGKILL'));
  await Promise.all(tempDirs.map((dir) => rm(dir, { recursive: true, force: true })));
});

const tempDir = async (prefix: string) => {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  tempDirs.push(dir);
  return dir;
};

/** The processes whose parent is `pid` (from /proc). */
function childrenOf(pid: number): Array<{ pid: number; command: string }> {
  return readdirSync('/proc')
    .filter((name) => /^\d+$/.test(name))
    .flatMap((name) => {
      try {
        const stat = readFileSync(`/proc/${name}/stat`, 'utf8');
        // The command name is in parentheses and may hold spaces: the fields after it are split.
        const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
        return ppid === pid ? [{ pid: Number(name), command: readFileSync(`/proc/${name}/cmdline`, 'utf8').replaceAll('\0', ' ') }] : [];
      } catch {
        return [];
      }
    });
}

const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

const portFree = (port: number) =>
  new Promise<boolean>((resolve) => {
    const probe = createServer();
    probe.once('error', () => resolve(false));
    probe.listen(port, '127.0.0.1', () => probe.close(() => resolve(true)));
  });

describe('microtask dev (issue 16)', () => {
  it('starts nats-server, the daemon, a worker and the inspector; runs a flow published on NATS; stops them all on SIGINT', async () => {
    const state = await tempDir('dev-state-');
    const started = Date.now();
    const dev = spawn(process.execPath, [CLI, 'dev', '--inspector-port', '0'], {
      cwd: ROOT,
      env: { PATH: process.env.PATH ?? '', MICROTASK_STATE_DIR: state },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    children.push(dev);
    let stdout = '';
    let stderr = '';
    dev.stdout!.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    dev.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    const exited = new Promise<number | null>((resolve) => dev.once('exit', (code) => resolve(code)));

    while (!/^ {2}try /m.test(stdout)) {
      if (dev.exitCode !== null) throw new Error(`dev exited with ${dev.exitCode}:\n${stderr}`);
      if (Date.now() - started > 30_000) throw new Error(`dev not ready within 30 s:\n${stdout}\n${stderr}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    const readyMs = Date.now() - started;
    const natsUrl = /^ {2}NATS +(nats:\/\/127\.0\.0\.1:(\d+)) /m.exec(stdout)![1]!;
    const natsPort = Number(/:(\d+)$/.exec(natsUrl)![1]);
    const inspectorUrl = /^ {2}inspector +(http:\/\/127\.0\.0\.1:(\d+)\/)$/m.exec(stdout)![1]!;
    const inspectorPort = Number(/:(\d+)\/$/.exec(inspectorUrl)![1]);
    expect(stdout).toMatch(new RegExp(`^ {2}state +${state}$`, 'm'));
    expect(stdout).toMatch(/^ {2}model +offline: no ANTHROPIC_API_KEY/m);
    expect(stdout).toContain(`JetStream store ${join(state, 'nats')}`);
    expect(stdout.trim().split('\n').length).toBeLessThanOrEqual(7);
    const nats = childrenOf(dev.pid!).filter((c) => c.command.includes('nats-server'));
    expect(nats, 'one nats-server, a child of dev').toHaveLength(1);
    expect(nats[0]!.command).toContain(`-a 127.0.0.1 -p ${natsPort} -js -sd ${join(state, 'nats')}`);

    // One dev per state directory: a second would run another nats-server on the same store.
    const second = await promisify(execFile)(process.execPath, [CLI, 'dev', '--inspector-port', '0'], {
      cwd: ROOT,
      env: { PATH: process.env.PATH ?? '', MICROTASK_STATE_DIR: state },
    }).then(
      (r) => ({ code: 0, ...r }),
      (e: { code: number; stdout: string; stderr: string }) => e,
    );
    expect(second.code, second.stderr).toBe(2);
    expect(second.stderr).toBe(`microtask: another \`microtask dev\` (pid ${dev.pid}) uses ${state}: stop it, or set MICROTASK_STATE_DIR to another directory\n`);

    // A flow started by a plain NATS client, as docs/protocol.md says, runs to its end.
    const client = await connect({ servers: natsUrl });
    let flowId: string;
    try {
      const input = JSON.parse(await readFile(join(ROOT, 'examples/microtask.json'), 'utf8'));
      const reply = await client.request('microtask.flow.start.microtask', JSON.stringify({ input, requestId: 'dev-test-1' }), { timeout: 10_000 });
      const answer = reply.json<{ ok: boolean; flowId: string }>();
      expect(answer).toMatchObject({ ok: true });
      flowId = answer.flowId;
      const consumer = await jetstream(client).consumers.get('MICROTASK_LOG_flows', { filter_subjects: `microtask.flow.${flowId}.done` });
      const message = await consumer.next({ expires: 30_000 });
      expect(message, 'the done message within 30 s').toBeTruthy();
      expect(message!.json()).toMatchObject({ flowId, status: 'done', output: { status: 'done' } });
    } finally {
      await client.close();
    }

    // The inspector page, and the flow in its API.
    const page = await fetch(inspectorUrl);
    expect(page.status).toBe(200);
    expect(await page.text()).toContain('<html');
    const flow = await fetch(`${inspectorUrl}api/flows/${flowId}`);
    expect(flow.status).toBe(200);
    expect(((await flow.json()) as { record: { status: string } }).record.status).toBe('done');

    const stopAt = Date.now();
    dev.kill('SIGINT');
    expect(await exited, stderr).toBe(0);
    const stopMs = Date.now() - stopAt;
    expect(alive(nats[0]!.pid), 'nats-server stopped').toBe(false);
    expect(await portFree(natsPort), `port ${natsPort} free`).toBe(true);
    expect(await portFree(inspectorPort), `port ${inspectorPort} free`).toBe(true);
    expect(readdirSync(state), 'its claim on the state directory released').not.toContain('dev.pid');
    // Stopped in order: the daemon and worker before nats-server (no reconnect warning, no error).
    expect(stderr).not.toMatch(/"level":(40|50|60)/);
    console.log(`microtask dev: ready in ${readyMs} ms, stopped in ${stopMs} ms`);
  }, 90_000);

  it('without nats-server, says in one line how to get one and exits 2', async () => {
    const state = await tempDir('dev-state-');
    const emptyPath = await tempDir('dev-path-');
    const { code, stdout, stderr } = await promisify(execFile)(process.execPath, [CLI, 'dev'], {
      cwd: ROOT,
      env: { PATH: emptyPath, NATS_SERVER_BIN: join(emptyPath, 'nats-server'), MICROTASK_STATE_DIR: state },
    }).then(
      (r) => ({ code: 0, ...r }),
      (e: { code: number; stdout: string; stderr: string }) => e,
    );
    expect(code).toBe(2);
    expect(stdout).toBe('');
    expect(stderr.trim().split('\n')).toHaveLength(1);
    expect(stderr).toMatch(/^microtask: NATS_SERVER_BIN=.* is not an executable file\. Install it with `apt-get install nats-server`.*https:\/\/github\.com\/nats-io\/nats-server\/releases/);
  });
});
