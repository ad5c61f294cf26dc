import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { startFakeAnthropic } from '../src/testing/fakeAnthropic.js';
import { smallDisk } from './support/fullDisk.js';
import { handWrittenReplies } from './support/handWrittenModel.js';
import { runCli as run, startCli as start, until } from './support/cliProcess.js';

/**
 * Issue 11, "A full disk", as a person meets it: the built CLI (dist/cli.js, `npm run build`)
 * with MICROTASK_STATE_DIR on a real small tmpfs. A build started on a full disk exited 3
 * with a stack trace; a flow halted by it printed `{"status":"failed","reason":"running"}`
 * (or a stack trace). Both must exit 2 with one line naming the cause and what to do.
 */


/**
 * The real SDK against a local fake server. A short timeout: a paid answer whose store
 * fails is retried until its deadline (20 s at least) before the flow stops.
 */
const modelEnv = (url: string) => ({ ANTHROPIC_API_KEY: 'sk-test', ANTHROPIC_BASE_URL: url, MICROTASK_MAX_RETRIES: '0', MICROTASK_TIMEOUT_MS: '5000' });

/**
 * Stderr as a person reads it: without the start-up line every embedded command prints
 * (`model: ...`) and the pino log lines (MICROTASK_LOG_LEVEL, `error` by default, which
 * the flow host writes the halt to as well).
 */
const causeLines = (stderr: string) => stderr.split('\n').filter((line) => line !== '' && !line.startsWith('model: ') && !line.startsWith('{"level":'));

/** A state directory on a small tmpfs, used once (its stores made) so only space is missing. */
async function stateOnSmallDisk() {
  const disk = await smallDisk();
  const state = join(disk.dir, 'state');
  await mkdir(state);
  const used = await run(['run', 'microtask', '--input', 'examples/microtask.json', '--no-progress'], { MICROTASK_STATE_DIR: state });
  expect(used.code, used.stderr).toBe(0);
  // Where the embedded stores keep flows (a full disk's line names it).
  return { disk, state, store: join(state, 'db') };
}

describe('the CLI on a full disk', { timeout: 120_000 }, () => {
  it('refuses to start a build on a full state directory: exit 2, one line naming ENOSPC and the directory, no stack trace', async () => {
    const { disk, state, store } = await stateOnSmallDisk();
    await using _ = disk;
    await disk.fill();
    const env = { MICROTASK_STATE_DIR: state };

    const built = await run(['build', 'examples/api-tester.json', '--no-progress'], env);
    expect(built.code, built.stderr).toBe(2);
    expect(built.stdout).toBe('');
    expect(causeLines(built.stderr)).toEqual([
      `microtask: ENOSPC: no space left on ${store}: the flow did not start (nothing saved, no model call); free space, then run the command again`,
    ]);

    const json = await run(['run', 'feedback-loop', '--input', 'examples/feedback-loop.json', '--no-progress', '--json'], env);
    expect(json.code, json.stderr).toBe(2);
    expect(JSON.parse(json.stdout)).toEqual({
      flowId: null,
      pattern: 'feedback-loop',
      status: 'not_started',
      error: { code: 'STORE_UNAVAILABLE', message: `ENOSPC: no space left on ${store}` },
    });
    expect(json.stderr).not.toMatch(/\n\s+at /);

    const detached = await run(['build', 'examples/api-tester.json', '--detach'], env);
    expect(detached.code, detached.stderr).toBe(2);
    expect(causeLines(detached.stderr)).toHaveLength(1);
    expect(detached.stderr).toContain(`microtask: ENOSPC: no space left on ${store}: the flow did not start`);
  });

  it('refuses a new state directory on a full disk the same way (lmdb would SIGBUS creating its file)', async () => {
    const disk = await smallDisk(256);
    await using _ = disk;
    await disk.fill();
    const state = join(disk.dir, 'fresh');
    const ran = await run(['run', 'microtask', '--input', 'examples/microtask.json', '--no-progress'], { MICROTASK_STATE_DIR: state });
    expect(ran.code, ran.stderr).toBe(2);
    expect(causeLines(ran.stderr)).toHaveLength(1);
    expect(ran.stderr).toContain(`ENOSPC: no space left on ${join(state, 'db')}`);
    expect(ran.stderr).not.toMatch(/\n\s+at /);
  });

  it('stops a flow whose disk fills mid-way: exit 2, JSON status "halted" with the flow id, step and cause, one line on stderr', async () => {
    // The first call answers slowly: the disk fills while it is in flight, after the step
    // that started it was saved.
    await using slow = await startFakeAnthropic({ replies: (request) => handWrittenReplies(request.index === 0 ? 1_500 : 0)(request) });
    const { disk, state } = await stateOnSmallDisk();
    await using _ = disk;
    const env = { ...modelEnv(slow.url), MICROTASK_STATE_DIR: state };
    const running = start(['run', 'feedback-loop', '--input', 'examples/feedback-loop.json', '--no-progress', '--json'], env);
    // A flow's first step (its microtask in flight) is saved before the microtask starts.
    await until(() => slow.requests.length > 0 || undefined, 'the first model call', 20_000);
    await disk.fill();

    expect(await running.exited, running.stderr()).toBe(2);
    const halted = JSON.parse(running.stdout()) as Record<string, any>;
    const flowId = halted.flowId as string;
    expect(flowId).toMatch(/^feedback-loop-/);
    expect(halted).toMatchObject({ pattern: 'feedback-loop', status: 'halted', error: { code: 'STORE_UNAVAILABLE' } });
    expect(halted.error.message).toMatch(/^ENOSPC: no space left on /);
    expect(halted.step).toBeGreaterThanOrEqual(1);
    expect(causeLines(running.stderr())).toEqual([
      `microtask: ${halted.error.message}: the flow ${flowId} stopped at step ${halted.step} (saved, resumable); free space, then \`microtask resume ${flowId}\``,
    ]);
    expect(running.stderr()).not.toMatch(/unexpected error|\n\s+at /);
    // Stopped, not ended: still running on disk, for \`microtask resume\`.
    const flows = await run(['flows', '--status', 'running', '--json'], env);
    expect(JSON.parse(flows.stdout).map((f: { flowId: string }) => f.flowId)).toContain(flowId);
  });

  it('says it in words without --json: one line on stderr, nothing on stdout', async () => {
    await using slow = await startFakeAnthropic({ replies: (request) => handWrittenReplies(request.index === 0 ? 1_500 : 0)(request) });
    const { disk, state } = await stateOnSmallDisk();
    await using _ = disk;
    const env = { ...modelEnv(slow.url), MICROTASK_STATE_DIR: state };
    const running = start(['run', 'feedback-loop', '--input', 'examples/feedback-loop.json', '--no-progress'], env);
    await until(() => slow.requests.length > 0 || undefined, 'the first model call', 20_000);
    await disk.fill();
    expect(await running.exited, running.stderr()).toBe(2);
    expect(running.stdout()).toBe('');
    expect(causeLines(running.stderr()), running.stderr()).toHaveLength(1);
    expect(causeLines(running.stderr())[0]).toMatch(
      new RegExp(`^microtask: ENOSPC: no space left on ${state}/db\\b.*: the flow (feedback-loop-\\S+) stopped at step \\d+ \\(saved, resumable\\); free space, then \`microtask resume \\1\`$`),
    );
  });
});
