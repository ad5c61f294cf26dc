import { execFile } from 'node:child_process';
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';

// The CLI as a user runs it: the built bin (npm test builds it first), in a child process.
const CLI = new URL('../dist/cli.js', import.meta.url).pathname;
const run = (args: string[], env: Record<string, string> = {}) =>
  promisify(execFile)(process.execPath, [CLI, ...args], {
    env: { PATH: process.env.PATH ?? '', ...env },
    cwd: new URL('..', import.meta.url).pathname,
  }).then(
    ({ stdout, stderr }) => ({ code: 0, stdout, stderr }),
    (e: { code: number; stdout: string; stderr: string }) => ({ code: e.code, stdout: e.stdout, stderr: e.stderr }),
  );

describe('the microtask CLI', () => {
  it('runs the example microtask offline, with no API key and no NATS', async () => {
    const { code, stdout, stderr } = await run(['run', 'microtask', '--input', 'examples/microtask.json']);
    expect(code).toBe(0);
    expect(stdout).toContain('Microtasks are short model calls');
    expect(stderr).toContain('offline');
  });

  it('prints the whole result envelope with --json', async () => {
    const { code, stdout } = await run(['run', 'microtask', '--input', 'examples/microtask.json', '--json']);
    expect(code).toBe(0);
    expect(JSON.parse(stdout)).toMatchObject({ success: true, taskType: 'summarize', usage: { calls: 1 } });
  });

  it('exits 2 on a wrong flag, a missing file, an invalid input and a bad variable, saying what is wrong', async () => {
    const flag = await run(['run', 'microtask', '--input', 'examples/microtask.json', '--jsno']);
    expect(flag.code).toBe(2);
    expect(flag.stderr).toMatch(/unknown option '--jsno'/);

    const missing = await run(['run', 'microtask', '--input', 'nope.json']);
    expect(missing).toMatchObject({ code: 2 });
    expect(missing.stderr).toContain('cannot read microtask input nope.json: no such file');

    const dir = await mkdtemp(join(tmpdir(), 'cli-'));
    await writeFile(join(dir, 'bad.json'), JSON.stringify({ system: 's', prompt: 'p' }));
    const invalid = await run(['run', 'microtask', '--input', join(dir, 'bad.json')]);
    expect(invalid.code).toBe(2);
    expect(invalid.stderr).toMatch(/taskType/);

    const env = await run(['run', 'microtask', '--input', 'examples/microtask.json'], { MICROTASK_TIMEOUT_MS: 'soon' });
    expect(env.code).toBe(2);
    expect(env.stderr).toContain('MICROTASK_TIMEOUT_MS="soon": expected a whole number of milliseconds');
  });

  it('exits 1 and prints the fallback when the microtask fails', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'cli-'));
    await writeFile(join(dir, 'unknown.json'), JSON.stringify({ taskType: 'summarize', system: 'never recorded', prompt: 'p' }));
    const { code, stdout, stderr } = await run(['run', 'microtask', '--input', join(dir, 'unknown.json')]);
    expect(code).toBe(1);
    expect(stdout).toContain('"fallback": true');
    expect(stderr).toContain('cassette_miss');
  });

  it('documents its exit codes in --help and never prints the API key', async () => {
    const help = await run(['--help']);
    expect(help.code).toBe(0);
    expect(help.stdout).toContain('Exit codes');
    const withKey = await run(['run', 'microtask', '--input', 'nope.json'], { ANTHROPIC_API_KEY: 'sk-secret-123' });
    expect(withKey.stdout + withKey.stderr).not.toContain('sk-secret-123');
  });
});
