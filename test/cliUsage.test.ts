import { execFile, spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';

// Issue 16, item 6: the CLI's answers to a mistyped or incomplete command line, through the
// built bin (dist/cli.js, as a user runs it).
const CLI = new URL('../dist/cli.js', import.meta.url).pathname;
const tempDirs: string[] = [];
afterAll(() => Promise.all(tempDirs.map((dir) => rm(dir, { recursive: true, force: true }))));

const run = async (args: string[], options: { timeoutMs?: number; env?: Record<string, string> } = {}) => {
  const state = await mkdtemp(join(tmpdir(), 'cli-usage-'));
  tempDirs.push(state);
  return promisify(execFile)(process.execPath, [CLI, ...args], {
    env: { PATH: process.env.PATH ?? '', MICROTASK_STATE_DIR: state, ...options.env },
    cwd: new URL('..', import.meta.url).pathname,
    // A command that should have refused at once but serves instead is stopped (SIGTERM) here.
    timeout: options.timeoutMs ?? 30_000,
  }).then(
    ({ stdout, stderr }) => ({ code: 0 as number | null, stdout, stderr }),
    (e: { code: number | null; stdout: string; stderr: string }) => ({ code: e.code, stdout: e.stdout, stderr: e.stderr }),
  );
};

describe('the CLI on a mistyped or incomplete command line (issue 16)', () => {
  it('names a mistyped flag as unknown, even when it hides a required one', async () => {
    const typo = await run(['run', 'microtask', '--inptu', 'examples/microtask.json']);
    expect(typo.code).toBe(2);
    expect(typo.stderr).toMatch(/^error: unknown option '--inptu'\n/);
    expect(typo.stderr).not.toContain('not specified');
    // With nothing mistyped, the missing option is still named.
    const missing = await run(['run', 'microtask']);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toMatch(/^error: required option '-i, --input <file>' not specified\n/);
  });

  it('marks --input required in `run --help`', async () => {
    const help = await run(['run', '--help']);
    expect(help.code).toBe(0);
    expect(help.stdout).toMatch(/-i, --input <file> +JSON file with the pattern's input \(required\)/);
  });

  it('says in one line, exit 2, that the inspector port of a daemon is taken', async () => {
    const taken: Server = createServer();
    await new Promise<void>((resolve) => taken.listen(0, '127.0.0.1', resolve));
    const { port } = taken.address() as { port: number };
    try {
      // Checked before the daemon connects (a daemon refused for its port has resumed nothing): no server need answer.
      const daemon = await run(['daemon', '--inspector-port', String(port)], { timeoutMs: 20_000, env: { NATS_URL: 'nats://127.0.0.1:1' } });
      expect(daemon.code, daemon.stderr).toBe(2);
      expect(daemon.stderr).toBe(
        `microtask: port ${port} is taken (another daemon serves its inspector there?): choose another with --inspector-port (0: any free port), or --no-inspector\n`,
      );
    } finally {
      taken.close();
    }
  });

  it('stays quiet when its reader closes the pipe early (`microtask run --help | head -1`): exit 0, no stack trace', async () => {
    const child = spawn(process.execPath, [CLI, 'run', '--help'], { env: { PATH: process.env.PATH ?? '' }, stdio: ['ignore', 'pipe', 'pipe'] });
    // Closed before the CLI writes: its write finds no reader (EPIPE).
    child.stdout.destroy();
    let stderr = '';
    child.stderr.on('data', (d) => (stderr += d));
    const code = await new Promise((resolve) => child.once('exit', resolve));
    expect(stderr).toBe('');
    expect(code).toBe(0);
  });
});
