import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { runCli } from './support/cliProcess.js';

// `run` is embedded by design; with NATS_URL set a user expects the flow on the daemons
// (as `build` goes there), so `run` says where it runs instead of ignoring NATS_URL silently.
describe('microtask run with NATS_URL set', () => {
  const notice = /^microtask: run runs the flow in this process .*NATS_URL is not used/m;

  it('says in one stderr line that it runs embedded, then runs as without NATS_URL', async () => {
    const state = await mkdtemp(join(tmpdir(), 'cli-run-nats-'));
    // Nothing listens there: the run must not need NATS at all.
    const { code, stdout, stderr } = await runCli(['run', 'microtask', '--input', 'examples/microtask.json', '--no-progress'], {
      MICROTASK_STATE_DIR: state,
      NATS_URL: 'nats://127.0.0.1:1',
    });
    expect(code, stderr).toBe(0);
    expect(stdout).toContain('Microtasks are short model calls');
    const lines = stderr.split('\n').filter((line) => notice.test(line));
    expect(lines, stderr).toHaveLength(1);
    expect(lines[0]).toContain(state);
    // Said before the flow starts: before the runtime's `model:` line.
    expect(stderr.search(notice)).toBeLessThan(stderr.indexOf('model: '));
  });

  it('says nothing of NATS without NATS_URL, and --help says it always runs in this process', async () => {
    const state = await mkdtemp(join(tmpdir(), 'cli-run-nats-'));
    const plain = await runCli(['run', 'microtask', '--input', 'examples/microtask.json', '--no-progress'], { MICROTASK_STATE_DIR: state });
    expect(plain.code, plain.stderr).toBe(0);
    expect(plain.stderr).not.toMatch(/NATS/);
    const help = await runCli(['run', '--help']);
    expect(help.code).toBe(0);
    expect(help.stdout).toMatch(/always runs the flow in this process/);
  });
});
