import { mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { reply, startFakeAnthropic } from '../src/testing/fakeAnthropic.js';
import { runCli as run, startCli as start, until } from './support/cliProcess.js';

// Embedded mode, as a person uses it: `microtask run` of a flow reviewed by a person waits,
// says so and how to answer; `approve`/`reject`/`send` from another terminal (another
// process on the same state directory) answer it; killed while it waits, the answer sent
// meanwhile is applied by `resume`.
const { review: _review, ...example } = JSON.parse(await readFile('examples/reentrant.json', 'utf8'));

// Each pass's draft is a plain text answer: the person, not a model, reviews it.
const model = await startFakeAnthropic({ replies: () => reply.text('Exports of a million rows no longer run out of memory.') });
afterAll(() => model.close());

async function setup() {
  const state = await mkdtemp(join(tmpdir(), 'cli-wait-'));
  const input = join(state, 'input.json');
  await writeFile(input, JSON.stringify({ ...example, personReview: {} }));
  return { env: { MICROTASK_STATE_DIR: state, ANTHROPIC_API_KEY: 'sk-test', ANTHROPIC_BASE_URL: model.url }, input };
}

const waitingFlow = (stderr: string) => /flow (\S+) waits for a person's review/.exec(stderr)?.[1];

describe('a person answers a waiting flow from the CLI', () => {
  it('run waits and says how to answer; reject revises, approve ends it; a wrong event is refused in one line', async () => {
    const { env, input } = await setup();
    const running = start(['run', 'reentrant', '--input', input, '--json', '--no-progress'], env);
    const flowId = await until(() => waitingFlow(running.stderr()), 'the flow to wait');
    expect(running.stderr()).toContain(`microtask approve ${flowId}`);
    // Another terminal sees it too.
    expect((await run(['show', flowId], env)).stdout).toContain(`flow ${flowId} waits for a person's review`);

    const wrong = await run(['send', flowId, 'score', '--data', '{"score":1}'], env);
    expect(wrong.code).toBe(2);
    expect(wrong.stderr.trim().split('\n')).toHaveLength(1);
    expect(wrong.stderr).toContain('it waits for: review');
    const badJson = await run(['send', flowId, 'review', '--data', '{approved'], env);
    expect(badJson.code).toBe(2);
    expect(badJson.stderr).toContain('--data');

    const rejected = await run(['reject', flowId, '--feedback', 'name who benefits'], env);
    expect(rejected.code).toBe(0);
    // The next pass runs and waits again.
    await until(() => running.stderr().split(`flow ${flowId} waits for`).length === 3, 'the second wait');
    expect((await run(['approve', flowId, '--id', 'ok-1'], env)).code).toBe(0);
    expect(await running.exited).toBe(0);
    const output = JSON.parse(running.stdout());
    expect(output).toMatchObject({ status: 'done', approved: true, passes: 2 });
    expect(output.revisions[0].review).toEqual({ approved: false, feedback: 'name who benefits', by: 'person' });
    // Sent again after it ended: it was applied, nothing more is done.
    const again = await run(['approve', flowId, '--id', 'ok-1'], env);
    expect(again.code).toBe(0);
    expect(again.stderr).toContain('already applied');
  }, 60_000);

  it('cancel from another terminal ends a run that waits for a person (asleep there): it stops with `cancelled`, exit 1', async () => {
    const { env, input } = await setup();
    const running = start(['run', 'reentrant', '--input', input, '--no-progress'], env);
    const flowId = await until(() => waitingFlow(running.stderr()), 'the flow to wait');
    const cancelled = await run(['cancel', flowId], env);
    expect(cancelled.code, cancelled.stderr).toBe(0);
    // Nothing else would end it: the run waited on, for a person who would never answer.
    const code = await Promise.race([running.exited, new Promise((resolve) => setTimeout(() => resolve('still waiting'), 10_000))]);
    expect(code, running.stderr()).toBe(1);
    expect(running.stderr()).toMatch(new RegExp(`reentrant ${flowId}: cancelled \\(cancelled by \`microtask cancel\`\\)`));
    expect(running.stderr()).not.toContain('microtask resume');
  }, 60_000);

  it('killed while it waits: the approval sent meanwhile is kept, and resume finishes the flow with it', async () => {
    const { env, input } = await setup();
    const running = start(['run', 'reentrant', '--input', input, '--no-progress'], env);
    const flowId = await until(() => waitingFlow(running.stderr()), 'the flow to wait');
    running.child.kill('SIGKILL');
    await running.exited;
    const approved = await run(['approve', flowId, '--feedback', 'fine'], env);
    expect(approved.code).toBe(0);
    expect(approved.stderr).toContain('when it is resumed');
    const resumed = await run(['resume', flowId, '--json', '--no-progress'], env);
    expect(resumed.code).toBe(0);
    expect(JSON.parse(resumed.stdout)).toMatchObject({ status: 'done', approved: true, passes: 1 });
    const unknown = await run(['approve', 'reentrant-nosuchflow-00000000'], env);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toContain('no flow reentrant-nosuchflow-00000000');
  }, 60_000);
});
