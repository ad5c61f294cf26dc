import { spawn } from 'node:child_process';
import { chmod, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';

// scripts/test-setup.mjs is `npm test`'s pretest. It runs here as a child process, as npm
// runs it, against a fake machine: MICROTASK_SETUP_ROOT stands for `/` in its fixed
// directories and PATH holds a fake apt-get, so nothing on this machine is installed or removed.
const script = join(import.meta.dirname, '..', 'scripts', 'test-setup.mjs');

interface Run {
  code: number | null;
  stderr: string;
  stdout: string;
}

function runSetup(env: Record<string, string>, options: { uid?: number } = {}): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [script], { env, stdio: ['ignore', 'pipe', 'pipe'], ...options });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk) => (stdout += chunk));
    child.stderr.on('data', (chunk) => (stderr += chunk));
    child.once('error', reject);
    child.once('close', (code) => resolve({ code, stdout, stderr }));
  });
}

const temps: string[] = [];
afterEach(async () => {
  await Promise.all(temps.splice(0).map((dir) => rm(dir, { recursive: true, force: true })));
});

async function executable(path: string, body = '#!/bin/sh\nexit 0\n') {
  await mkdir(join(path, '..'), { recursive: true });
  await writeFile(path, body);
  await chmod(path, 0o755);
}

/** A fake machine: an empty root, a bin directory for PATH, and what its apt-get was asked. */
async function fakeMachine(options: { aptGet?: 'installs' | 'fails' } = {}) {
  const dir = await mkdtemp(join(tmpdir(), 'microtask-setup-'));
  await chmod(dir, 0o755);
  temps.push(dir);
  const root = join(dir, 'root');
  const bin = join(dir, 'bin');
  const aptLog = join(dir, 'apt.log');
  await mkdir(root, { recursive: true });
  await mkdir(bin, { recursive: true });
  if (options.aptGet) {
    // Records each call; `install` puts each package's program where Debian's package does.
    const places = { 'nats-server': '/usr/sbin/nats-server', chromium: '/usr/bin/chromium', bubblewrap: '/usr/bin/bwrap' };
    const installs = Object.entries(places)
      .map(([pkg, path]) => `    ${pkg}) mkdir -p "$(dirname "${root}${path}")"; printf '#!/bin/sh\\n' > "${root}${path}"; chmod 755 "${root}${path}";;`)
      .join('\n');
    await executable(
      join(bin, 'apt-get'),
      `#!/bin/sh
PATH=/usr/bin:/bin
echo "$DEBIAN_FRONTEND $*" >> "${aptLog}"
${options.aptGet === 'fails' ? 'echo "E: Unable to locate package nats-server" >&2; exit 100' : ''}
echo "Reading package lists..."
[ "$1" = install ] || exit 0
for p in "$@"; do
  case "$p" in
${installs}
  esac
done
`,
    );
  }
  const env = { PATH: bin, MICROTASK_SETUP_ROOT: root };
  const aptCalls = async () => (await readFile(aptLog, 'utf8').catch(() => '')).trim().split('\n').filter(Boolean);
  return { root, bin, env, aptCalls };
}

describe('npm test set-up (scripts/test-setup.mjs)', () => {
  it('says nothing and succeeds on this machine, where nats-server, chromium and bwrap are installed', async () => {
    const run = await runSetup({ PATH: process.env.PATH ?? '' });
    expect(run).toEqual({ code: 0, stdout: '', stderr: '' });
  });

  it('finds each program where the tests look for it, and then does not call apt-get', async () => {
    const machine = await fakeMachine({ aptGet: 'installs' });
    await executable(join(machine.bin, 'nats-server'));
    await executable(join(machine.root, 'usr/bin/chromium'));
    await executable(join(machine.root, 'bin/bwrap'));
    expect(await runSetup(machine.env)).toEqual({ code: 0, stdout: '', stderr: '' });
    expect(await machine.aptCalls()).toEqual([]);
  });

  it('as root with apt-get, installs what is missing quietly, saying so in one line', async () => {
    const machine = await fakeMachine({ aptGet: 'installs' });
    await executable(join(machine.root, 'usr/sbin/nats-server'));
    const run = await runSetup(machine.env);
    expect(run.code).toBe(0);
    expect(run.stdout).toBe('');
    expect(run.stderr).toBe('test setup: installing chromium bubblewrap with apt-get (missing chromium, bwrap)\n');
    expect(await machine.aptCalls()).toEqual(['noninteractive update -qq', 'noninteractive install -y -qq chromium bubblewrap']);
  });

  it('accepts NATS_SERVER_BIN and CHROMIUM_PATH in place of the packages', async () => {
    const machine = await fakeMachine({ aptGet: 'installs' });
    const elsewhere = join(machine.root, '..', 'elsewhere');
    await executable(join(elsewhere, 'nats'));
    await executable(join(elsewhere, 'chrome'));
    const run = await runSetup({ ...machine.env, NATS_SERVER_BIN: join(elsewhere, 'nats'), CHROMIUM_PATH: join(elsewhere, 'chrome') });
    expect(run.stderr).toBe('test setup: installing bubblewrap with apt-get (missing bwrap)\n');
    expect(await machine.aptCalls()).toEqual(['noninteractive update -qq', 'noninteractive install -y -qq bubblewrap']);
  });

  it('refuses a NATS_SERVER_BIN that is not a program, in one line, without installing anything', async () => {
    const machine = await fakeMachine({ aptGet: 'installs' });
    const run = await runSetup({ ...machine.env, NATS_SERVER_BIN: '/nonexistent' });
    expect(run.code).toBe(1);
    expect(run.stderr).toBe('test setup: NATS_SERVER_BIN=/nonexistent is not an executable file: unset it, or point it at the program\n');
    expect(await machine.aptCalls()).toEqual([]);
  });

  it('without apt-get, fails in one line naming the packages and the variables', async () => {
    const machine = await fakeMachine();
    const run = await runSetup(machine.env);
    expect(run.code).toBe(1);
    expect(run.stderr).toBe(
      "test setup: missing nats-server, chromium, bwrap: install the packages nats-server chromium bubblewrap with your system's package manager, or set NATS_SERVER_BIN / CHROMIUM_PATH\n",
    );
  });

  it('not as root, fails in one line naming the exact command, and does not call apt-get', async () => {
    const machine = await fakeMachine({ aptGet: 'installs' });
    await executable(join(machine.root, 'usr/bin/chromium'));
    // nobody: the child really runs without root's rights (this suite runs as root).
    const run = await runSetup(machine.env, { uid: 65534 });
    expect(run.code).toBe(1);
    expect(run.stderr).toBe('test setup: missing nats-server, bwrap: run `sudo apt-get install -y nats-server bubblewrap`, then npm test again\n');
    expect(await machine.aptCalls()).toEqual([]);
  });

  it("when apt-get fails, shows apt's words and the command to run by hand", async () => {
    const machine = await fakeMachine({ aptGet: 'fails' });
    const run = await runSetup(machine.env);
    expect(run.code).toBe(1);
    expect(run.stderr).toContain('E: Unable to locate package nats-server');
    expect(run.stderr.trim().split('\n').at(-1)).toBe(
      'test setup: `apt-get update -qq` failed (above): run `apt-get update && apt-get install -y nats-server chromium bubblewrap` by hand',
    );
  });
});
