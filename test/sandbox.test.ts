import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { createConnection, createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort, startNatsServer, type NatsServer } from '../src/testing/natsServer.js';

// Issue 11: generated code run by the tool builder's `--help` check sent SIGUSR1 to the
// orchestrator, opened its debugger and read ANTHROPIC_API_KEY through it. Here hostile
// generated code (test/support/hostileCli.js) attacks the process that checks it
// (test/support/sandboxHarness.ts, started with a sentinel key in its environment): env,
// /proc of the parent, files, signals, the debugger, local ports and nats-server, writes.

const ROOT = new URL('..', import.meta.url).pathname;
const HARNESS = join(ROOT, 'test/support/sandboxHarness.ts');
const TSX = pathToFileURL(createRequire(import.meta.url).resolve('tsx')).href;
const token = () => randomBytes(8).toString('hex');
const SENTINEL = `sk-ant-sentinel-${token()}`;
const SECRET_600 = `secret-0600-${token()}`;
const SECRET_644 = `secret-0644-${token()}`;
const GREETING = `local-service-${token()}`;

let nats: NatsServer;
let local: Server;
let localPort: number;
let inspectPort: number;
let work: string;
let config: Record<string, string | number>;
const tempDirs: string[] = [];

beforeAll(async () => {
  // Say how to get bubblewrap rather than test less: its absence is a failure, never a skip.
  if (!['/usr/bin/bwrap', '/bin/bwrap', '/usr/local/bin/bwrap'].some((path) => existsSync(path))) {
    throw new Error('bubblewrap is missing: apt-get install -y bubblewrap (Debian, Ubuntu); the set-up step of npm test (scripts/test-setup.mjs) installs it when run as root');
  }
  nats = await startNatsServer();
  local = createServer((socket) => socket.end(`${GREETING}\n`));
  await new Promise<void>((resolve) => local.listen(0, '127.0.0.1', resolve));
  localPort = (local.address() as { port: number }).port;
  inspectPort = await freePort();
  work = await mkdtemp(join(tmpdir(), 'sandbox-test-'));
  tempDirs.push(work);
  // Secrets the checking process can read: one only it may read, one anyone may.
  await chmod(work, 0o755);
  await writeFile(join(work, 'secret-0600'), SECRET_600, { mode: 0o600 });
  await writeFile(join(work, 'secret-0644'), SECRET_644, { mode: 0o644 });
  // A directory anyone may write to: only the sandbox's filesystem view keeps writes out.
  const open = join(work, 'open');
  await mkdir(open);
  await chmod(open, 0o777);
  config = {
    secret600: join(work, 'secret-0600'),
    secret644: join(work, 'secret-0644'),
    secretDir: work,
    outsideWrite: join(open, 'outside-write.txt'),
    debuggerWrite: join(open, 'debugger-write.txt'),
    tmpWrite: join(tmpdir(), `microtask-pwned-${token()}`),
    inspectPort,
    localPort,
    natsPort: nats.port,
  };
});

afterAll(async () => {
  await nats?.close();
  local?.close();
  await Promise.all(tempDirs.map((dir) => rm(dir, { recursive: true, force: true })));
  if (config) await rm(String(config.tmpWrite), { force: true });
});

interface HarnessRun {
  exitCode: number | null;
  stdout: string;
  stderr: string;
  /** What the hostile code saw, attack by attack. */
  report: Record<string, unknown>;
  /** Whether the harness's own debugger opened (SIGUSR1 reached it). */
  inspectorUrl: string | null;
}

async function runHostile(mode: 'help' | 'raw', sandbox: string, from: 'src' | 'dist' = 'src'): Promise<HarnessRun> {
  const code = (await readFile(join(ROOT, 'test/support/hostileCli.js'), 'utf8')).replace('__CONFIG__', JSON.stringify(config));
  const dir = await mkdtemp(join(tmpdir(), 'sandbox-code-'));
  tempDirs.push(dir);
  const codeFile = join(dir, 'cli.js');
  await writeFile(codeFile, code);
  const child = spawn(process.execPath, ['--import', TSX, `--inspect-port=${inspectPort}`, HARNESS, codeFile, mode, from], {
    cwd: ROOT,
    env: { PATH: process.env.PATH, ANTHROPIC_API_KEY: SENTINEL, MICROTASK_SANDBOX: sandbox, NODE_NO_WARNINGS: '1' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d) => (stdout += d));
  child.stderr.on('data', (d) => (stderr += d));
  const exitCode = await new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  const out = JSON.parse(stdout.trim().split('\n').at(-1) ?? 'null') as { result: { diagnostics?: string[]; stderr?: string }; inspectorUrl: string | null } | null;
  // help: the check quotes stderr in its diagnostic; raw: the run's stderr itself.
  const text = out?.result.diagnostics?.join('\n') ?? out?.result.stderr ?? '';
  const json = /\{"uid".*\}/.exec(text)?.[0];
  const run = { exitCode, stdout, stderr, report: json ? JSON.parse(json) : {}, inspectorUrl: out?.inspectorUrl ?? null };
  // SANDBOX_TEST_REPORT=1 prints what each attack got (the figures in the README's "Security").
  if (process.env.SANDBOX_TEST_REPORT) console.log(JSON.stringify({ mode, sandbox, from, inspectorUrl: run.inspectorUrl, report: run.report }));
  return run;
}

/** What must hold whatever the mechanism and the layer: nothing of the parent's reached the code, nothing of it got out. */
function expectContained(run: HarnessRun) {
  const everything = `${run.stdout}\n${run.stderr}`;
  expect(run.exitCode, run.stderr).toBe(0);
  expect(Object.keys(run.report).length, `no report from the hostile code: ${everything.slice(0, 2000)}`).toBeGreaterThan(10);
  // (1) no environment (bwrap and sh set PWD), and none of the parent's
  expect(Object.keys(run.report.env as object).filter((name) => name !== 'PWD' && name !== 'OLDPWD')).toEqual([]);
  expect(everything).not.toContain(SENTINEL);
  // (2) no secret file
  expect(everything).not.toContain(SECRET_600);
  expect(everything).not.toContain(SECRET_644);
  // (3) the parent got no signal: its debugger stayed closed, and it lived to say so
  expect(run.report['SIGUSR1 to PARENT']).toMatch(/^ERR /);
  expect(run.inspectorUrl).toBeNull();
  expect(run.report['debugger eval']).toMatch(/^ERR /);
  // (4) no port of this host answered
  for (const port of ['tcp inspector port', 'tcp local port', 'tcp nats', 'tcp 9229']) expect(run.report[port], port).toMatch(/^ERR /);
  expect(everything).not.toContain(GREETING);
  expect(everything).not.toContain('"server_id"');
  // (5) nothing written outside
  expect(run.report['write outside']).toMatch(/^ERR /);
  expect(run.report['write own dir']).toMatch(/^ERR /);
  expect(existsSync(String(config.outsideWrite))).toBe(false);
  expect(existsSync(String(config.debuggerWrite))).toBe(false);
  expect(existsSync(String(config.tmpWrite))).toBe(false);
}

describe.each(['bwrap', 'unshare'])('hostile generated code in the %s sandbox', (mechanism) => {
  it("the --help check keeps the parent's environment, files, signals, debugger and ports from it", async () => {
    const run = await runHostile('help', mechanism);
    expectContained(run);
  });

  it('the sandbox alone, without Node permissions inside, does too: the boundary is the OS', async () => {
    const run = await runHostile('raw', mechanism);
    expectContained(run);
    // Here only the OS answers: the paths are not there at all, or read-only.
    expect(run.report['read secret 0600']).toBe('ERR ENOENT');
    expect(run.report['read secret 0644']).toBe('ERR ENOENT');
    expect(run.report['list the secret directory']).toBe('ERR ENOENT');
    expect(run.report['read /proc/PARENT/environ']).toBe('ERR ENOENT');
    expect(run.report['read the secret through /proc/PARENT/root']).toBe('ERR ENOENT');
    expect(run.report['SIGUSR1 to PARENT']).toBe('ERR ESRCH');
    expect(run.report['write outside']).toBe('ERR ENOENT');
    expect(run.report['write own dir']).toBe('ERR EROFS');
    // Its own /tmp is a tmpfs of its own: the write succeeded there, and is gone.
    expect(run.report['write /tmp']).toBeUndefined();
    expect(run.report['tcp local port']).toMatch(/^ERR (ECONNREFUSED|ENETUNREACH)$/);
    // Outside its namespaces it is nobody (we run as root) or at least never more than us.
    expect(run.report.uid).toBe(mechanism === 'bwrap' ? 65534 : 0);
  });
});

describe('the sandbox', () => {
  it('runs the code as nobody outside its namespaces when the orchestrator is root', async () => {
    expect(process.getuid?.(), 'this test needs root: CI and the dev machines run as root').toBe(0);
    const { runSandboxed, sandboxTempDir, SANDBOX_TOOL_DIR } = await import('../src/actors/sandbox.js');
    const tempRoot = await sandboxTempDir();
    tempDirs.push(tempRoot);
    const dir = join(tempRoot, 'tool');
    await mkdir(dir);
    const marker = `sandbox-uid-${token()}`;
    await writeFile(join(dir, 'wait.js'), `setTimeout(() => {}, 3000); // ${marker}\n`);
    for (const mechanism of ['bwrap', 'unshare'] as const) {
      process.env.MICROTASK_SANDBOX = mechanism;
      try {
        const running = runSandboxed({ dir, tempRoot, timeoutMs: 10_000, command: [process.execPath, `${SANDBOX_TOOL_DIR}/wait.js`, marker] });
        let uid: string | undefined;
        for (let i = 0; i < 50 && !uid; i++) {
          await new Promise((resolve) => setTimeout(resolve, 100));
          for (const pid of (await readdir('/proc')).filter((name) => /^\d+$/.test(name))) {
            const cmdline = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
            if (cmdline.includes(marker) && cmdline.startsWith(process.execPath)) {
              uid = /^Uid:\s+(\d+)/m.exec(await readFile(`/proc/${pid}/status`, 'utf8').catch(() => ''))?.[1];
            }
          }
        }
        expect(uid, mechanism).toBe('65534');
        expect((await running).code, mechanism).toBe(0);
      } finally {
        delete process.env.MICROTASK_SANDBOX;
      }
    }
  });
});

describe("the orchestrator's own processes", () => {
  it('ignore SIGUSR1: a signal opens no debugger in `microtask daemon` (dist/cli.js), which lives on', async () => {
    const CLI = join(ROOT, 'dist/cli.js');
    expect(existsSync(CLI), 'dist/cli.js is missing: run npm run build first (npm test does)').toBe(true);
    const state = await mkdtemp(join(tmpdir(), 'sandbox-cli-'));
    tempDirs.push(state);
    await using nats = await startNatsServer();
    const port = await freePort();
    const daemon = spawn(process.execPath, [`--inspect-port=${port}`, CLI, 'daemon', '--no-inspector'], {
      cwd: ROOT,
      env: { PATH: process.env.PATH, NATS_URL: nats.url, MICROTASK_STATE_DIR: state, MICROTASK_LOG_LEVEL: 'info', ANTHROPIC_API_KEY: SENTINEL },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let stderr = '';
    daemon.stderr.on('data', (d) => (stderr += d));
    try {
      for (let i = 0; i < 200 && !stderr.includes('daemon ready'); i++) await new Promise((resolve) => setTimeout(resolve, 50));
      expect(stderr).toContain('daemon ready');
      daemon.kill('SIGUSR1');
      await new Promise((resolve) => setTimeout(resolve, 1000));
      const connected = await new Promise<boolean>((resolve) => {
        const socket = createConnection(port, '127.0.0.1');
        socket.on('connect', () => (socket.destroy(), resolve(true)));
        socket.on('error', () => resolve(false));
      });
      expect(connected, `the debugger opened on port ${port}`).toBe(false);
      expect(stderr).not.toContain('Debugger listening');
      expect(stderr).toContain('SIGUSR1 ignored');
      expect(daemon.exitCode).toBeNull();
      expect(daemon.signalCode).toBeNull();
    } finally {
      daemon.kill('SIGTERM');
      await new Promise((resolve) => daemon.once('exit', resolve));
    }
  });
});
