import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { reply, startFakeAnthropic, type FakeAnthropic, type FakeReply } from '../src/testing/fakeAnthropic.js';
import { startNatsServer, type NatsServer } from '../src/testing/natsServer.js';
import { runCli as run, startCli as start, until } from './support/cliProcess.js';

// Issue 16, item 3: a refused key printed about 40 failure lines and ended "integration
// failed and recovery did not fix it: the failure analysis failed (auth: ...) after the
// microtask failed (auth: ...)", exit 1. A cause no fallback helps stops the flow at once,
// and is said once, last, exit 2 (the user's to fix, like a bad environment).

const causes: Array<{ name: string; reply: FakeReply; code: string; line: RegExp; names: RegExp }> = [
  {
    name: 'a refused key (401)',
    reply: reply.error(401, 'authentication_error', 'invalid x-api-key'),
    code: 'MODEL_AUTH',
    line: /^microtask: the API key was refused \(401 authentication_error: invalid x-api-key\); check ANTHROPIC_API_KEY \(MODEL_AUTH; flow tool-builder-\S+ failed\)$/,
    names: /\b401\b|refused|x-api-key/, // not the 401 of a port (127.0.0.1:34401 in the model line)
  },
  {
    name: 'no credit (400 "credit balance is too low")',
    reply: reply.error(400, 'invalid_request_error', 'Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing to upgrade or purchase credits.'),
    code: 'MODEL_BILLING',
    line: /^microtask: the Anthropic account cannot pay for calls \(400 invalid_request_error: Your credit balance is too low .*\); add credit in the Anthropic Console \(Plans & Billing\), then run it again \(MODEL_BILLING; flow tool-builder-\S+ failed\)$/,
    names: /credit|billing/i,
  },
  {
    name: 'a model that does not exist (404)',
    reply: reply.error(404, 'not_found_error', 'model: claude-nope'),
    code: 'MODEL_NOT_FOUND',
    line: /^microtask: the model claude-nope was not found \(404 not_found_error: model: claude-nope\); check MICROTASK_MODEL or the model the task names \(MODEL_NOT_FOUND; flow tool-builder-\S+ failed\)$/,
    // Not the model's name: the first line says which model the command uses.
    names: /not.found/i,
  },
];

/**
 * The model requests a stopped build may have made: the tool builder's first step (the
 * analysis) sends its three microtasks at once, before any answer is back; the SDK retries
 * nothing (the model port retries only transient failures). Before the stop, a build kept
 * calling: every step fell back and the next one called again.
 */
const FIRST_STEP_CALLS = 3;

let fake: FakeAnthropic | undefined;
afterEach(async () => {
  await fake?.close();
  fake = undefined;
});

async function modelAnswering(answer: FakeReply) {
  fake = await startFakeAnthropic({ replies: () => answer });
  return { ANTHROPIC_API_KEY: 'sk-ant-test-key-do-not-print', ANTHROPIC_BASE_URL: fake.url, MICROTASK_MODEL: 'claude-nope' };
}

/** The lines of stderr that name the cause. */
const naming = (stderr: string, names: RegExp) => stderr.split('\n').filter((l) => names.test(l));

describe('a cause no fallback helps, in embedded mode (the built CLI)', { timeout: 60_000 }, () => {
  for (const cause of causes) {
    it(`${cause.name}: one line naming it, last, exit 2, no call after the first step`, async () => {
      const env = { ...(await modelAnswering(cause.reply)), MICROTASK_STATE_DIR: await mkdtemp(join(tmpdir(), 'stop-cli-')) };
      const { code, stdout, stderr } = await run(['build', 'examples/api-tester.json'], env);
      expect(code, stderr).toBe(2);
      expect(stdout).toBe('');
      expect(naming(stderr, cause.names), stderr).toHaveLength(1);
      expect(stderr.trimEnd().split('\n').at(-1)).toMatch(cause.line);
      expect(stderr).not.toContain('fallback');
      expect(stderr).not.toContain('sk-ant-test-key');
      expect(fake!.requests.length).toBeGreaterThanOrEqual(1);
      expect(fake!.requests.length).toBeLessThanOrEqual(FIRST_STEP_CALLS);

      // What a program reads: the code and the line, in the flow's record too.
      const flowId = stderr.match(/flow (tool-builder-\S+) failed\)$/m)![1]!;
      const shown = await run(['show', flowId, '--json'], env);
      expect(JSON.parse(shown.stdout).record).toMatchObject({ status: 'failed', error: { code: cause.code } });
    });
  }

  it('--json gives {status: "failed", error: {code, message}} on stdout; the line on stderr', async () => {
    const env = { ...(await modelAnswering(causes[0]!.reply)), MICROTASK_STATE_DIR: await mkdtemp(join(tmpdir(), 'stop-cli-')) };
    const { code, stdout, stderr } = await run(['build', 'examples/api-tester.json', '--json', '--no-progress'], env);
    expect(code, stderr).toBe(2);
    const output = JSON.parse(stdout);
    expect(output).toEqual({
      flowId: expect.stringMatching(/^tool-builder-/),
      pattern: 'tool-builder',
      status: 'failed',
      error: { code: 'MODEL_AUTH', message: 'the API key was refused (401 authentication_error: invalid x-api-key); check ANTHROPIC_API_KEY' },
    });
    expect(naming(stderr, causes[0]!.names), stderr).toHaveLength(1);
  });

  it('run stops the same way (a flow of one microtask at a time: one model call)', async () => {
    const env = { ...(await modelAnswering(causes[1]!.reply)), MICROTASK_STATE_DIR: await mkdtemp(join(tmpdir(), 'stop-cli-')) };
    const { code, stdout, stderr } = await run(['run', 'feedback-loop', '--input', 'examples/feedback-loop.json'], env);
    expect(code, stderr).toBe(2);
    expect(stdout).toBe('');
    expect(naming(stderr, causes[1]!.names), stderr).toHaveLength(1);
    expect(stderr.trimEnd().split('\n').at(-1)).toMatch(/^microtask: the Anthropic account cannot pay for calls .*\(MODEL_BILLING; flow feedback-loop-\S+ failed\)$/);
    expect(fake!.requests).toHaveLength(1);
    // Not a crash: no error log, no stack.
    expect(stderr).not.toContain('flow crashed');
  });
});

describe('a cause no fallback helps, over NATS (a daemon and a worker, each its own process)', () => {
  let nats: NatsServer;
  beforeAll(async () => {
    nats = await startNatsServer();
  });
  afterAll(async () => {
    await nats?.close();
  });

  for (const cause of [causes[0]!, causes[1]!]) {
    it(`${cause.name}: the flow ends failed with ${cause.code} on the worker's first answer; build says it once, exit 2; the task is neither retried nor dead-lettered`, async () => {
      const model = await modelAnswering(cause.reply);
      const common = { NATS_URL: nats.url, MICROTASK_SUBJECT_PREFIX: `stop${cause.code.toLowerCase().replace(/_/g, '')}`, MICROTASK_LOG_LEVEL: 'info' };
      const daemon = start(['daemon', '--no-inspector'], { ...common, MICROTASK_STATE_DIR: await mkdtemp(join(tmpdir(), 'stop-daemon-')) });
      const worker = start(['worker'], { ...common, ...model, MICROTASK_STATE_DIR: await mkdtemp(join(tmpdir(), 'stop-worker-')) });
      await until(() => daemon.stderr().includes('daemon ready') || undefined, 'the daemon to be ready');
      await until(() => worker.stderr().includes('worker taking tasks') || undefined, 'the worker to be ready');

      const client = { NATS_URL: nats.url, MICROTASK_SUBJECT_PREFIX: common.MICROTASK_SUBJECT_PREFIX, MICROTASK_STATE_DIR: await mkdtemp(join(tmpdir(), 'stop-client-')) };
      const built = await run(['build', 'examples/api-tester.json'], client);
      expect(built.code, built.stderr).toBe(2);
      expect(naming(built.stderr, cause.names), built.stderr).toHaveLength(1);
      expect(built.stderr.trimEnd().split('\n').at(-1)).toMatch(cause.line);
      expect(fake!.requests.length).toBeLessThanOrEqual(FIRST_STEP_CALLS);

      // The daemon logs the stop once for the flow; the worker neither retried nor dead-lettered a task.
      const flowId = built.stderr.match(/flow (tool-builder-\S+) failed\)$/m)![1]!;
      const stops = daemon.stderr().split('\n').filter((l) => l.includes('flow stopped') && l.includes(flowId));
      expect(stops, daemon.stderr()).toHaveLength(1);
      expect(daemon.stderr()).not.toContain('flow crashed');
      expect(worker.stderr()).not.toMatch(/delivered again|dead-lettered/);
      // The worker says it once for the flow too, however many of its tasks met it.
      expect(worker.stderr().split('\n').filter((l) => l.includes('no fallback helps') && l.includes(flowId)), worker.stderr()).toHaveLength(1);
      expect(fake!.requests.length).toBeLessThanOrEqual(FIRST_STEP_CALLS);

      const shown = await run(['show', flowId, '--json'], client);
      expect(JSON.parse(shown.stdout).record).toMatchObject({ status: 'failed', error: { code: cause.code } });

      daemon.child.kill('SIGTERM');
      worker.child.kill('SIGTERM');
      expect(await daemon.exited).toBe(0);
      expect(await worker.exited).toBe(0);
    }, 90_000);
  }
});
