import { execFile } from 'node:child_process';
import { mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';

// The CLI as a user runs it: the built bin (npm test builds it first), in a child process.
const CLI = new URL('../dist/cli.js', import.meta.url).pathname;
// Each run gets a fresh state directory unless the test gives one: never the repo's .microtask.
const run = async (args: string[], env: Record<string, string> = {}) =>
  promisify(execFile)(process.execPath, [CLI, ...args], {
    env: { PATH: process.env.PATH ?? '', MICROTASK_STATE_DIR: await mkdtemp(join(tmpdir(), 'cli-state-')), ...env },
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

  it('prints the whole output, with the result envelope, with --json', async () => {
    const { code, stdout } = await run(['run', 'microtask', '--input', 'examples/microtask.json', '--json']);
    expect(code).toBe(0);
    expect(JSON.parse(stdout)).toMatchObject({
      pattern: 'microtask',
      status: 'done',
      envelope: { success: true, taskType: 'summarize' },
      usage: { calls: 1 },
    });
  });

  it('runs the example of every pattern offline', async () => {
    for (const pattern of ['feedback-loop', 'parallel', 'incremental', 'metacognitive', 'progressive', 'reentrant']) {
      const { code, stdout, stderr } = await run(['run', pattern, '--input', `examples/${pattern}.json`, '--json']);
      expect(code, `${pattern}: ${stderr}`).toBe(0);
      const output = JSON.parse(stdout);
      expect(output).toMatchObject({ pattern, status: 'done' });
      expect(output.usage.calls).toBeGreaterThan(0);
    }
  });

  it('builds the example tool offline: written under --out, type-checked, its --help runs', async () => {
    const out = await mkdtemp(join(tmpdir(), 'cli-build-'));
    const { code, stdout, stderr } = await run(['build', 'examples/api-tester.json', '--out', out]);
    expect(code, stderr).toBe(0);
    expect(stdout.trim()).toBe(join(out, 'api-tester'));
    expect(stderr).toMatch(/toolBuilder: integrating/);
    expect(stderr).toMatch(/done; 6 files written; 11 model calls/);
    const help = await promisify(execFile)(process.execPath, [join(out, 'api-tester/src/cli.js'), '--help']);
    expect(help.stdout).toContain('Usage: api-tester');
  });

  it('builds under MICROTASK_STATE_DIR by default', async () => {
    const state = await mkdtemp(join(tmpdir(), 'cli-state-'));
    const { code, stdout } = await run(['build', 'examples/api-tester.json', '--json', '--no-progress'], { MICROTASK_STATE_DIR: state });
    expect(code).toBe(0);
    expect(JSON.parse(stdout)).toMatchObject({ status: 'done', dir: join(state, 'tools', 'api-tester') });
  });

  it('refuses an invalid spec before any model call, saying what is wrong', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'cli-'));
    await writeFile(join(dir, 'spec.json'), JSON.stringify({ name: 'x-tool', description: 'd', modules: [{ name: '../../etc', purpose: 'p' }] }));
    const { code, stderr } = await run(['build', join(dir, 'spec.json')]);
    expect(code).toBe(2);
    expect(stderr).toContain('modules.0.name: a module name is 1 to 40 letters and digits');
    expect(stderr).not.toContain('model:');
  });

  it('refuses, before any model call, what cannot work: another spec offline, an unwritable --out, a broken cassette', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'cli-'));
    await writeFile(join(dir, 'mine.json'), JSON.stringify({ name: 'my-tool', description: 'd', modules: [{ name: 'parser', purpose: 'p' }] }));
    const offline = await run(['build', join(dir, 'mine.json'), '--out', dir]);
    expect(offline.code).toBe(2);
    expect(offline.stderr).toContain('offline mode (no ANTHROPIC_API_KEY) replays hand-written answers for examples/api-tester.json only');

    await writeFile(join(dir, 'a-file'), '');
    const out = await run(['build', 'examples/api-tester.json', '--out', join(dir, 'a-file', 'x')]);
    expect(out.code).toBe(2);
    expect(out.stderr).toContain('cannot write tools to');
    expect(out.stderr).not.toContain('model:');

    const cassette = await run(['run', 'microtask', '--input', 'examples/microtask.json'], { MICROTASK_CASSETTE: join(dir, 'none.json') });
    expect(cassette.code).toBe(2);
    expect(cassette.stderr).toContain('cannot read cassette');
  });

  // Issue 11: `--out` naming a file passed the check, ran the whole build (paid for), then failed writing.
  it('refuses an --out that is a file, before any model call, in one line', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'cli-'));
    const file = join(dir, 'a-file');
    await writeFile(file, '');
    for (const args of [
      ['build', 'examples/api-tester.json', '--out', file],
      ['run', 'tool-builder', '--input', 'examples/tool-builder.json', '--out', file],
    ]) {
      const { code, stderr } = await run([...args, '--no-progress']);
      expect(code, stderr).toBe(2);
      expect(stderr).toBe(`microtask: cannot write tools to ${file}: it is a file, not a directory; choose another --out or MICROTASK_STATE_DIR\n`);
    }
  });

  // Issue 11: a MICROTASK_STATE_DIR naming a file crashed (exit 3, a stack trace) in the stores' mkdir.
  it('refuses a MICROTASK_STATE_DIR that is a file (or under one) in one line, exit 2, whatever the command', { timeout: 90_000 }, async () => {
    const dir = await mkdtemp(join(tmpdir(), 'cli-'));
    const file = join(dir, 'a-file');
    await writeFile(file, '');
    const commands = [
      ['run', 'microtask', '--input', 'examples/microtask.json'],
      ['build', 'examples/api-tester.json', '--no-progress'],
      ['flows'],
      ['show', 'some-flow'],
      ['cancel', 'some-flow'],
      ['resume', 'some-flow'],
      ['inspect', '--port', '0'],
      ['daemon', '--no-inspector'],
    ];
    // Every command with the file itself; a few with a path under it (the same check).
    for (const [state, which] of [[file, commands], [join(file, 'below'), commands.slice(0, 3)]] as const) {
      for (const args of which) {
        const { code, stderr } = await run(args, { MICROTASK_STATE_DIR: state });
        expect([args[0], code], stderr).toEqual([args[0], 2]);
        expect(stderr, args[0]).toMatch(new RegExp(`^microtask: MICROTASK_STATE_DIR=${state.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} .*(is a file|under a file).*\\n$`));
        expect(stderr.trim().split('\n'), args[0]).toHaveLength(1);
      }
    }
  });

  // Issue 11: data nested 5,000 deep overflowed the stack (exit 3) instead of being refused as input.
  it('refuses input nested deeper than 64 levels in one line, exit 2', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'cli-'));
    const deep = `${'['.repeat(5_000)}${']'.repeat(5_000)}`;
    await writeFile(join(dir, 'deep-input.json'), `{"taskType":"summarize","system":"s","prompt":"p","data":${deep}}`);
    await writeFile(join(dir, 'deep-spec.json'), `{"name":"x-tool","description":"d","modules":${`${'{"a":'.repeat(5_000)}1${'}'.repeat(5_000)}`}}`);
    const input = await run(['run', 'microtask', '--input', join(dir, 'deep-input.json')]);
    expect(input.code, input.stderr).toBe(2);
    expect(input.stderr).toBe(`microtask: microtask input ${join(dir, 'deep-input.json')} is nested deeper than 64 levels of arrays and objects (the limit)\n`);
    const spec = await run(['build', join(dir, 'deep-spec.json')]);
    expect(spec.code, spec.stderr).toBe(2);
    expect(spec.stderr).toBe(`microtask: tool spec ${join(dir, 'deep-spec.json')} is nested deeper than 64 levels of arrays and objects (the limit)\n`);
  });

  // Issue 11: the daemon accepted a UTF-8 byte order mark, `build` and `run` refused it as "not JSON".
  it('reads an input file and a spec that start with a UTF-8 byte order mark', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'cli-'));
    const withBom = async (from: string) => {
      const path = join(dir, from.split('/').pop()!);
      await writeFile(path, `\uFEFF${await readFile(from, 'utf8')}`);
      return path;
    };
    const ran = await run(['run', 'microtask', '--input', await withBom('examples/microtask.json'), '--json']);
    expect(ran.code, ran.stderr).toBe(0);
    expect(JSON.parse(ran.stdout)).toMatchObject({ status: 'done' });
    const built = await run(['build', await withBom('examples/api-tester.json'), '--out', dir, '--no-progress']);
    expect(built.code, built.stderr).toBe(0);
    expect(built.stdout.trim()).toBe(join(dir, 'api-tester'));
  });

  it('fails a build fast when the model server cannot be reached', async () => {
    const { code, stderr } = await run(['build', 'examples/api-tester.json', '--out', await mkdtemp(join(tmpdir(), 'cli-')), '--no-progress'], {
      ANTHROPIC_API_KEY: 'sk-test',
      ANTHROPIC_BASE_URL: 'http://127.0.0.1:1',
      MICROTASK_MAX_RETRIES: '0',
    });
    expect(code).toBe(1);
    expect(stderr).toContain('cannot reach the model server');
    // At most the three parallel analyses reached for the network; every later step was answered by the
    // circuit breaker ("not tried"), so the build ends in seconds, not after every retry wait.
    expect(stderr).toMatch(/failed .*not tried: cannot reach the model server.*; nothing written; [123] model calls?,/);
  });

  // New-user pass: with progress on, the cause (a server that is not there) was only at the end of
  // the last of some 80 lines, nested in the reason of the integration that failed.
  it('says in one line, before how the build ended, that no model call reached the server and what to check', async () => {
    const { code, stderr } = await run(['build', 'examples/api-tester.json', '--out', await mkdtemp(join(tmpdir(), 'cli-'))], {
      ANTHROPIC_API_KEY: 'sk-test',
      ANTHROPIC_BASE_URL: 'http://127.0.0.1:1',
      MICROTASK_MAX_RETRIES: '0',
    });
    expect(code).toBe(1);
    const lines = stderr.trimEnd().split('\n');
    const cause = lines.findIndex((line) => line.startsWith('microtask: '));
    expect(cause, stderr).toBeGreaterThan(0);
    expect(lines[cause]).toMatch(/^microtask: no model call was answered: cannot reach the model server at http:\/\/127\.0\.0\.1:1 \(.+\); .*ANTHROPIC_BASE_URL/);
    // The cause, then the status line: nothing of the progress after it.
    expect(lines.slice(cause + 1)).toEqual([expect.stringMatching(/^api-tester tool-builder-\S+: failed /)]);
  });

  it('lists flows, resumes a finished one by printing its output, and refuses an unknown one', async () => {
    const state = await mkdtemp(join(tmpdir(), 'cli-flows-'));
    const env = { MICROTASK_STATE_DIR: state };
    const ran = await run(['run', 'feedback-loop', '--input', 'examples/feedback-loop.json', '--json', '--no-progress'], env);
    const { flowId } = JSON.parse(ran.stdout);
    const listed = await run(['flows', '--json'], env);
    expect(JSON.parse(listed.stdout)).toEqual([expect.objectContaining({ flowId, pattern: 'feedback-loop', status: 'done', state: 'done' })]);
    const table = await run(['flows'], env);
    expect(table.stdout).toMatch(new RegExp(`^FLOW +PATTERN +STATUS +STATE +UPDATED\\n${flowId} +feedback-loop +done +done `));

    const again = await run(['resume', flowId, '--no-progress'], env);
    expect(again.code).toBe(0);
    expect(again.stderr).toContain('had already ended (done)');
    expect(again.stdout).toContain('Fix pagination skipping the last page');

    const unknown = await run(['resume', 'no-such-flow'], env);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toContain('no flow no-such-flow');
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
    // A request the cassette has no answer for is no model call: nothing was asked, nothing paid.
    expect(stderr).toMatch(/: failed \(cassette_miss: .*\); 0 model calls, 0 tokens/);
    expect(stderr).toContain('hint: ran offline');
  });

  it('documents its exit codes in --help and never prints the API key', async () => {
    const help = await run(['--help']);
    expect(help.code).toBe(0);
    expect(help.stdout).toContain('Exit codes');
    for (const command of ['run', 'build']) {
      const sub = await run([command, '--help']);
      expect(sub.code).toBe(0);
      expect(sub.stdout).toContain('Example');
    }
    const pattern = await run(['run', 'nope', '--input', 'x.json']);
    expect(pattern.code).toBe(2);
    expect(pattern.stderr).toContain('Allowed choices are microtask, incremental, feedback-loop');
    const withKey = await run(['run', 'microtask', '--input', 'nope.json'], { ANTHROPIC_API_KEY: 'sk-secret-123' });
    expect(withKey.stdout + withKey.stderr).not.toContain('sk-secret-123');
  });
});
