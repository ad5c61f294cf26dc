import { access, mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { reply, startFakeAnthropic, type FakeAnthropic } from '../src/testing/fakeAnthropic.js';
import { startNatsServer, type NatsServer } from '../src/testing/natsServer.js';
import { connectNatsBus } from '../src/bus/NatsBus.js';
import { subjects } from '../src/bus/subjects.js';
import { runCli as run, startCli as start, until } from './support/cliProcess.js';


let fake: FakeAnthropic | undefined;
afterEach(async () => {
  await fake?.close();
  fake = undefined;
});
/** A model server that answers every call with `text` after `delayMs` (a number, or what the function says then). */
async function slowModel(delayMs: number | (() => number), text = 'A slow but fine answer.') {
  fake = await startFakeAnthropic({ replies: () => reply.text(text, { delayMs: typeof delayMs === 'number' ? delayMs : delayMs() }) });
  return { ANTHROPIC_API_KEY: 'sk-test', ANTHROPIC_BASE_URL: fake.url, MICROTASK_MAX_RETRIES: '0' };
}

// Each test runs several CLI processes one after another: on a busy machine that takes a while.
describe('the CLI a person drives', { timeout: 90_000 }, () => {
  it("shows a flow's transitions and microtasks with tokens and durations, as text and JSON; an unknown flow exits 2", async () => {
    const env = { MICROTASK_STATE_DIR: await mkdtemp(join(tmpdir(), 'cli-show-')) };
    const ran = await run(['run', 'feedback-loop', '--input', 'examples/feedback-loop.json', '--json', '--no-progress'], env);
    const { flowId } = JSON.parse(ran.stdout);

    const shown = await run(['show', flowId], env);
    expect(shown.code).toBe(0);
    expect(shown.stdout).toContain(`${flowId}  feedback-loop`);
    expect(shown.stdout).toMatch(/microtasks 4 started, 4 done, 0 failed; 557 tokens \(510 in, 47 out\)/);
    expect(shown.stdout).toMatch(/feedbackLoop → verifying {2}on xstate\.done\.actor/);
    expect(shown.stdout).toMatch(/✓ commit-message \S+\/generate\/0 {2}\d+ ms, 72 tokens \(70 in, 2 out\)/);
    expect(shown.stdout).toMatch(/flow ended done/);
    expect(shown.stdout).not.toMatch(/\u001b\[/); // NO_COLOR

    const verbose = await run(['show', flowId, '--verbose'], env);
    expect(verbose.stdout).toContain('prompt: Write the subject line for this change.');
    expect(verbose.stdout).toContain('answer: Fix pagination skipping the last page');

    const json = JSON.parse((await run(['show', flowId, '--json'], env)).stdout);
    expect(json.record).toMatchObject({ flowId, status: 'done' });
    expect(json.record.snapshot).toBeUndefined();
    const kinds = new Set(json.entries.map((e: { kind: string }) => e.kind));
    expect([...kinds].sort()).toEqual(['flow', 'microtask', 'step', 'transition']);
    expect(json.entries.find((e: { kind: string }) => e.kind === 'step').snapshot).toBeUndefined();
    const withSnapshots = JSON.parse((await run(['show', flowId, '--json', '--snapshots'], env)).stdout);
    expect(withSnapshots.entries.find((e: { kind: string }) => e.kind === 'step').snapshot).toMatchObject({ status: 'active' });

    const unknown = await run(['show', 'no-such-flow'], env);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toContain('no flow no-such-flow');
  });

  it('cancels an embedded flow another process is running: that run stops with `cancelled`, and it cannot be resumed', async () => {
    // Calls long enough that two more CLI processes (`flows`, then `cancel`: each 1-2 s to start on a busy machine) come before the flow ends.
    const env = { MICROTASK_STATE_DIR: await mkdtemp(join(tmpdir(), 'cli-cancel-')), ...(await slowModel(5_000)) };
    // The parallel pattern: its output is a list, which a cancelled flow does not have.
    const running = start(['run', 'parallel', '--input', 'examples/parallel.json', '--no-progress'], env);
    const flowId = await until(async () => {
      const listed = JSON.parse((await run(['flows', '--json', '--status', 'running'], env)).stdout || '[]');
      return listed[0]?.flowId as string | undefined;
    }, 'the flow to be listed as running');

    const cancelled = await run(['cancel', flowId], env);
    expect(cancelled.code, cancelled.stderr).toBe(0);
    expect(cancelled.stderr).toContain(`cancelled ${flowId}`);
    expect(await running.exited, running.stderr()).toBe(1);
    expect(running.stderr()).toMatch(new RegExp(`parallel ${flowId}: cancelled \\(cancelled by \`microtask cancel\`\\)`));

    const again = await run(['cancel', flowId], env);
    expect(again.code).toBe(2);
    expect(again.stderr).toContain('already ended: cancelled');
    const resumed = await run(['resume', flowId, '--no-progress'], env);
    expect(resumed.stderr).toContain('had already ended (cancelled)');
    expect((await run(['show', flowId], env)).stdout).toMatch(/flow ended cancelled: cancelled by `microtask cancel`/);
  });

  it('build --detach prints the flow id at once; the build runs on in the background and `show --follow` sees it end', async () => {
    const state = await mkdtemp(join(tmpdir(), 'cli-detach-'));
    const out = await mkdtemp(join(tmpdir(), 'cli-detach-out-'));
    const env = { MICROTASK_STATE_DIR: state };
    const detached = await run(['build', 'examples/api-tester.json', '--out', out, '--detach'], env);
    expect(detached.code, detached.stderr).toBe(0);
    const flowId = detached.stdout.trim();
    expect(flowId).toMatch(/^tool-builder-/);
    expect(detached.stderr).toContain(`microtask show ${flowId}`);

    const followed = await run(['show', flowId, '--follow'], env);
    expect(followed.code, followed.stderr).toBe(0);
    expect(followed.stderr).toContain(`tool-builder ${flowId}: ended (done)`);
    await access(join(out, 'api-tester', 'src', 'cli.js'));
  });

  it('refuses at once what cannot work: an --out under /proc, an unknown status, --snapshots without --json', async () => {
    const env = { MICROTASK_STATE_DIR: await mkdtemp(join(tmpdir(), 'cli-refuse-')) };
    const started = Date.now();
    const proc = await run(['build', 'examples/api-tester.json', '--out', '/proc/no/such/dir'], env);
    expect(proc.code).toBe(2);
    expect(proc.stderr).toContain('cannot write tools to /proc/no/such/dir: it cannot be created (ENOENT)');
    expect(Date.now() - started).toBeLessThan(20_000);
    const status = await run(['flows', '--status', 'running,bogus'], env);
    expect(status.code).toBe(2);
    expect(status.stderr).toContain('unknown status bogus');
    const snapshots = await run(['show', 'x', '--snapshots'], env);
    expect(snapshots.code).toBe(2);
    expect(snapshots.stderr).toContain('--snapshots goes with --json');
  });

  it('inspect serves the inspector page and its API on the port asked, and stops on SIGTERM with exit 0', async () => {
    const env = { MICROTASK_STATE_DIR: await mkdtemp(join(tmpdir(), 'cli-inspect-')) };
    const { flowId } = JSON.parse((await run(['run', 'microtask', '--input', 'examples/microtask.json', '--json', '--no-progress'], env)).stdout);
    const inspector = start(['inspect', flowId, '--port', '0'], env);
    const url = await until(() => inspector.stdout().match(/^(http:\/\/127\.0\.0\.1:\d+\/)\S*/m)?.[1], 'the inspector URL');
    expect(inspector.stdout()).toContain(flowId);
    const page = await fetch(url);
    expect(page.status).toBe(200);
    expect(page.headers.get('content-type')).toContain('text/html');
    const flows = (await (await fetch(`${url}api/flows`)).json()) as { flows: Array<{ flowId: string }> };
    expect(flows.flows.map((f) => f.flowId)).toContain(flowId);
    const taken = await run(['inspect', '--port', new URL(url).port], env);
    expect(taken.code).toBe(2);
    expect(taken.stderr).toContain(`port ${new URL(url).port} is taken`);
    inspector.child.kill('SIGTERM');
    expect(await inspector.exited).toBe(0);

    const badPort = await run(['inspect', '--port', '70000'], env);
    expect(badPort.code).toBe(2);
    expect(badPort.stderr).toContain('a port is a whole number from 0 to 65535');
  });

  it('`daemon` and `worker` without NATS_URL refuse in one line, exit 2, saying what to run instead (there is no embedded daemon)', async () => {
    const env = { MICROTASK_STATE_DIR: await mkdtemp(join(tmpdir(), 'cli-no-nats-')) };
    for (const [args, says] of [
      [['daemon'], /^microtask: the daemon serves flows to clients over NATS: set NATS_URL .*`microtask dev`.*`microtask run` runs a flow embedded/],
      [['worker'], /^microtask: a worker takes microtasks from the NATS work queue: set NATS_URL .*`microtask dev`/],
    ] as const) {
      const { code, stdout, stderr } = await run([...args], env);
      expect([args[0], code], stderr).toEqual([args[0], 2]);
      expect(stderr.trim().split('\n'), args[0]).toHaveLength(1);
      expect(stderr.trim(), args[0]).toMatch(says);
      expect(stdout).toBe('');
    }
  });
});

describe('the CLI against daemons on NATS', () => {
  let nats: NatsServer;
  beforeAll(async () => {
    nats = await startNatsServer();
  });
  afterAll(async () => {
    await nats?.close();
  });

  it('build publishes the request, shows progress from the journal, writes the tool here; show and cancel go through NATS', async () => {
    const daemonState = await mkdtemp(join(tmpdir(), 'cli-nats-daemon-'));
    const clientState = await mkdtemp(join(tmpdir(), 'cli-nats-client-'));
    const out = await mkdtemp(join(tmpdir(), 'cli-nats-out-'));
    const common = { NATS_URL: nats.url, MICROTASK_SUBJECT_PREFIX: 'clitest', MICROTASK_INSPECTOR_PORT: '0' };
    // The client shares nothing with the daemon but NATS: not its state directory, not its disk.
    const client = { ...common, MICROTASK_STATE_DIR: clientState };

    const noDaemon = await run(['build', 'examples/api-tester.json', '--out', out], client);
    expect(noDaemon.code).toBe(2);
    expect(noDaemon.stderr).toContain('no daemon answered');

    const daemon = start(['daemon', '--worker'], { ...common, MICROTASK_STATE_DIR: daemonState, MICROTASK_LOG_LEVEL: 'info' });
    await until(() => daemon.stderr().includes('daemon ready') || undefined, 'the daemon to be ready');

    const built = await run(['build', 'examples/api-tester.json', '--out', out], client);
    expect(built.code, built.stderr).toBe(0);
    expect(built.stdout.trim()).toBe(join(out, 'api-tester'));
    const flowId = built.stderr.match(/started (tool-builder-\S+) on the daemon/)?.[1];
    expect(flowId).toBeDefined();
    // Progress lines from the journal the daemon wrote to JetStream.
    expect(built.stderr).toMatch(/toolBuilder: integrating/);
    expect(built.stderr).toMatch(/microtask integrate-tool \S+: done, \d+ ms, [\d,]+ tokens/);
    await access(join(out, 'api-tester', 'src', 'cli.js'));

    const shown = await run(['show', flowId!], client);
    expect(shown.code, shown.stderr).toBe(0);
    expect(shown.stdout).toMatch(/status +done/);
    expect(shown.stdout).toMatch(/microtasks 11 started, 11 done, 0 failed/);

    const cancelDone = await run(['cancel', flowId!], client);
    expect(cancelDone.code).toBe(2);
    expect(cancelDone.stderr).toContain('FLOW_FINISHED');

    const detached = await run(['build', 'examples/api-tester.json', '--out', out, '--detach'], client);
    expect(detached.code, detached.stderr).toBe(0);
    expect(detached.stdout.trim()).toMatch(/^tool-builder-/);

    daemon.child.kill('SIGTERM');
    expect(await daemon.exited).toBe(0);
  }, 120_000);

  it('`daemon --worker` stops on SIGTERM with exit 0 once its worker finished the call in flight (a new daemon ends the flow without paying again); a second signal exits at once', async () => {
    let delay = 800;
    const env = { NATS_URL: nats.url, MICROTASK_SUBJECT_PREFIX: 'clisig', MICROTASK_INSPECTOR_PORT: '0', MICROTASK_SHUTDOWN_GRACE_MS: '20000', MICROTASK_STATE_DIR: await mkdtemp(join(tmpdir(), 'cli-sig-')), ...(await slowModel(() => delay)) };
    const client = await connectNatsBus({ servers: [nats.url] });
    const names = subjects('clisig');
    const startFlow = async () => (await client.request(names.flowStart('microtask'), JSON.stringify({ input: { taskType: 'summarize', system: 's', prompt: 'p', timeoutMs: 120_000 } }), { timeoutMs: 10_000 })).json<{ flowId: string }>().flowId;
    const listed = async (status: string) => JSON.parse((await run(['flows', '--json', '--status', status], env)).stdout) as Array<{ flowId: string }>;
    try {
      const daemon = start(['daemon', '--worker'], { ...env, MICROTASK_LOG_LEVEL: 'info' });
      await until(() => daemon.stderr().includes('daemon ready') || undefined, 'the daemon to be ready');
      const first = await startFlow();
      await until(() => fake!.requests.length >= 1 || undefined, 'the model call');
      daemon.child.kill('SIGTERM');
      expect(await daemon.exited, daemon.stderr()).toBe(0);
      expect(daemon.stderr()).toContain('the worker here finishes its tasks in flight');
      // The daemon's flows stopped at once, saved; the worker stored the paid answer before it exited.
      const again = start(['daemon', '--worker'], { ...env, MICROTASK_LOG_LEVEL: 'info' });
      await until(async () => (await listed('done')).some((f) => f.flowId === first) || undefined, 'the resumed flow to end', 30_000);
      expect(fake!.requests).toHaveLength(1);

      // A call that would outlast the patience of the person at the terminal: the second signal ends it now.
      delay = 60_000;
      await startFlow();
      await until(() => fake!.requests.length >= 2 || undefined, 'the slow call');
      again.child.kill('SIGTERM');
      await until(() => again.stderr().includes('the worker here finishes its tasks in flight') || undefined, 'the drain to begin');
      const signalledAt = Date.now();
      again.child.kill('SIGTERM');
      expect(await again.exited).toBe(130);
      expect(Date.now() - signalledAt).toBeLessThan(5_000);
      expect(again.stderr()).toContain('second signal: exiting now');
      // The flow is still there to be resumed.
      expect(await listed('running')).toHaveLength(1);
    } finally {
      await client.close();
    }
  }, 120_000);
});


// Issue 11: wrong NATS credentials crashed `daemon` and `worker` (exit 3, a stack trace), and
// `build` and `flows` blamed NATS_URL.
describe('the CLI against a NATS server that asks for credentials', () => {
  let nats: NatsServer;
  beforeAll(async () => {
    nats = await startNatsServer({ args: ['--user', 'alice', '--pass', 'right-password'] });
  });
  afterAll(async () => {
    await nats?.close();
  });

  const commands = [['daemon', '--no-inspector'], ['worker'], ['build', 'examples/api-tester.json', '--no-progress'], ['flows']];

  it('says in one line, exit 2, that the credentials were refused and which variables to check, never the password', async () => {
    for (const args of commands) {
      const env = { NATS_URL: nats.url, NATS_USER: 'alice', NATS_PASSWORD: 'wrong-password', MICROTASK_STATE_DIR: await mkdtemp(join(tmpdir(), 'cli-auth-')) };
      const { code, stdout, stderr } = await run(args, env);
      expect([args[0], code], stderr).toEqual([args[0], 2]);
      // A service logs that it is connecting (a JSON line) before: the error is the last line, alone.
      expect(stderr.trim().split('\n').at(-1), args[0]).toBe(
        `microtask: NATS refused the credentials for alice at ${nats.url} (Authorization Violation): check NATS_USER/NATS_PASSWORD`,
      );
      expect(stderr, args[0]).not.toMatch(/^\s+at /m);
      expect(stdout + stderr, args[0]).not.toContain('wrong-password');
    }
  }, 90_000);

  it('says which variables to set when none were given', async () => {
    for (const args of [commands[0]!, commands[3]!]) {
      const { code, stderr } = await run(args, { NATS_URL: nats.url, MICROTASK_STATE_DIR: await mkdtemp(join(tmpdir(), 'cli-auth-')) });
      expect([args[0], code], stderr).toEqual([args[0], 2]);
      expect(stderr.trim().split('\n').at(-1), args[0]).toBe(
        `microtask: NATS at ${nats.url} asks for credentials (Authorization Violation): set NATS_USER and NATS_PASSWORD, NATS_TOKEN, NATS_NKEY_SEED or NATS_CREDS`,
      );
    }
  }, 60_000);
});
