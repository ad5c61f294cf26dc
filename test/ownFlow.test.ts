import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { cp, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { reply, startFakeAnthropic, type FakeAnthropic, type FakeRequest } from '../src/testing/fakeAnthropic.js';
import { startNatsServer, type NatsServer } from '../src/testing/natsServer.js';
import { runCli, until } from './support/cliProcess.js';

/**
 * The README's "Your own flow", done as a user does it, from a separate directory: the
 * package packed (its dist/, built by `npm test` before vitest), installed there by its
 * name with the example's other dependencies, examples/own-flow copied beside it, and run
 * with the installed `microtask` bin: embedded (`microtask run`), then a daemon and a
 * worker on a nats-server of its own, started with the example's client script, the daemon
 * killed mid-flow and started again. The model is the local fake Anthropic server.
 */
const repo = new URL('..', import.meta.url).pathname;
const exec = promisify(execFile);
let dir: string;
let packed: string[];

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'own-flow-'));
  // --ignore-scripts: `prepare` would build again; `npm test` built dist/ already.
  const { stdout } = await exec('npm', ['pack', '--ignore-scripts', '--json', '--pack-destination', dir], { cwd: repo });
  const [pack] = JSON.parse(stdout) as Array<{ filename: string; files: Array<{ path: string }> }>;
  packed = pack!.files.map((f) => f.path);
  await cp(join(repo, 'examples/own-flow'), dir, { recursive: true });
  // What the README says: `npm install microtask-orchestrator` (here its tarball), xstate and zod
  // from the example's package.json; from the local cache when it has them.
  await exec('npm', ['install', '--prefer-offline', '--no-audit', '--no-fund', '--loglevel=error', join(dir, pack!.filename)], { cwd: dir });
}, 90_000);

const children: ChildProcess[] = [];
afterEach(() => {
  for (const c of children.splice(0)) if (c.exitCode === null) c.kill('SIGKILL');
});

/** The installed bin, in the example's directory, with a bare environment and what the test gives. */
function start(command: string, args: string[], env: Record<string, string>) {
  const child = spawn(process.execPath, [command, ...args], { cwd: dir, env: { PATH: process.env.PATH ?? '', NO_COLOR: '1', ...env } });
  children.push(child);
  let out = '';
  let err = '';
  child.stdout!.on('data', (d) => (out += d));
  child.stderr!.on('data', (d) => (err += d));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code, signal) => resolve(code ?? (signal ? 128 : null))));
  return { child, stdout: () => out, stderr: () => err, exited };
}
const bin = () => join(dir, 'node_modules/microtask-orchestrator/dist/cli.js');
const microtask = (args: string[], env: Record<string, string>) => start(bin(), args, env);

/**
 * The model: a triage answer (the flow's own answer schema) by issue, one that does not fit
 * the schema for the typo (so the module's fallback answers), and a text summary.
 */
function triageModel(summaryDelayMs = 0) {
  return startFakeAnthropic({
    replies: (r: FakeRequest) => {
      const tool = r.body.tools?.[0]?.name;
      if (!tool) return reply.text('Fix the login 500 first.', { delayMs: summaryDelayMs });
      // The whole conversation: the runner asks again once, with what was wrong, after an answer that does not fit.
      const asked = JSON.stringify(r.body.messages);
      if (asked.includes('Login')) return reply.tool(tool, { severity: 'high', area: 'auth' });
      if (asked.includes('Typo')) return reply.tool(tool, { severity: 'urgent!!' });
      return reply.tool(tool, { severity: 'low', area: 'settings' });
    },
  });
}

/** The `rank` task's log lines (it appends one per run, in the example's directory) of a flow. */
async function rankRuns(flowId: string): Promise<string[][]> {
  const log = await readFile(join(dir, 'triage-log.jsonl'), 'utf8').catch(() => '');
  return log
    .split('\n')
    .filter(Boolean)
    .map((line) => JSON.parse(line) as { key: string; ranked: string[] })
    .filter((line) => line.key === `${flowId}/rank`)
    .map((line) => line.ranked);
}

/** What the `rank` task gives the flow: most severe first (the typo fell back to medium). */
const ranked = [expect.stringContaining('Login fails'), expect.stringContaining('Typo'), expect.stringContaining('settings page')];

const triaged = [
  { issue: expect.stringContaining('Login fails'), severity: 'high', area: 'auth' },
  { issue: expect.stringContaining('settings page'), severity: 'low', area: 'settings' },
  // Not the schema's: the worker (or embedded runner) fell back as the module's `fallbacks` says.
  { issue: expect.stringContaining('Typo'), severity: 'medium', area: 'unknown', fallback: true },
];

let model: FakeAnthropic | undefined;
let nats: NatsServer | undefined;
afterAll(async () => {
  await model?.close();
  await nats?.close();
  // The installed copy weighs some hundred megabytes: not left behind by every run.
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe('your own flow, from a separate directory that depends on the package by its name', { timeout: 90_000 }, () => {
  it("the README shows the example's files as they are", async () => {
    const readme = await readFile(join(repo, 'README.md'), 'utf8');
    for (const file of ['flows.js', 'start.js']) expect(readme).toContain(await readFile(join(repo, 'examples/own-flow', file), 'utf8'));
  });

  it('the package holds the compiled library, client, testing helpers and their types; one xstate and one zod are installed', async () => {
    for (const file of ['dist/index.js', 'dist/index.d.ts', 'dist/client.d.ts', 'dist/testing/index.d.ts', 'dist/cli.js', 'dist/flowsModule.js']) expect(packed).toContain(file);
    // The user's machine and schemas and the package's must be the same copies: one of each, at the top.
    const nested = existsSync(join(dir, 'node_modules/microtask-orchestrator/node_modules'))
      ? await readdir(join(dir, 'node_modules/microtask-orchestrator/node_modules'))
      : [];
    expect(nested).not.toContain('xstate');
    expect(nested).not.toContain('zod');
    expect(existsSync(join(dir, 'node_modules/xstate/package.json'))).toBe(true);
    expect(existsSync(join(dir, 'node_modules/zod/package.json'))).toBe(true);
  });

  it('`microtask run triage --flows ./flows.js` runs it embedded: its answer schema, its fallback, a parallel child, its task, a microtask; killed, `resume --flows` ends it, its task not run again', async () => {
    model = await triageModel();
    const env = { ANTHROPIC_API_KEY: 'sk-test', ANTHROPIC_BASE_URL: model.url, MICROTASK_STATE_DIR: join(dir, 'state-run'), MICROTASK_MAX_RETRIES: '0' };
    const run = microtask(['run', 'triage', '--flows', './flows.js', '--input', 'issues.json', '--no-progress'], env);
    expect(await run.exited, run.stderr()).toBe(0);
    expect(JSON.parse(run.stdout())).toEqual({ summary: 'Fix the login 500 first.', ranked, triaged });
    const [, ranId] = /triage (triage-\S+): done; \d+ model calls/.exec(run.stderr()) ?? [];
    expect(ranId, run.stderr()).toBeDefined();
    // The module's own task ran once, in this process.
    expect(await rankRuns(ranId!)).toEqual([ranked]);
    await model.close();

    // Killed while its summary is asked for, it is resumed from its last step: the triage calls are not made again.
    model = await triageModel(3_000);
    const crashEnv = { ...env, ANTHROPIC_BASE_URL: model.url, MICROTASK_STATE_DIR: join(dir, 'state-resume') };
    const killed = microtask(['run', 'triage', '--flows', './flows.js', '--input', 'issues.json', '--no-progress'], crashEnv);
    await until(() => model!.requests.find((r) => !r.body.tools), 'the summary to be asked for', 20_000);
    const triageCalls = model.requests.filter((r) => r.body.tools).length;
    killed.child.kill('SIGKILL');
    await killed.exited;
    const [running] = JSON.parse((await runCli(['flows', '--json', '--status', 'running'], crashEnv)).stdout) as Array<{ flowId: string; pattern: string }>;
    expect(running).toMatchObject({ pattern: 'triage' });
    const resumed = microtask(['resume', running!.flowId, '--flows', './flows.js', '--no-progress'], crashEnv);
    expect(await resumed.exited, resumed.stderr()).toBe(0);
    expect(JSON.parse(resumed.stdout())).toEqual({ summary: 'Fix the login 500 first.', ranked, triaged });
    expect(model.requests.filter((r) => r.body.tools).length).toBe(triageCalls);
    // `rank` finished before the kill: the resumed flow did not run it again.
    expect(await rankRuns(running!.flowId)).toEqual([ranked]);
    await model.close();
    model = undefined;
  });

  // New-user pass: offline (no key), every answer a fallback, it ended with "done; 4 model calls, 0 tokens"
  // and no word that nothing had answered; its `rank` task showed as "microtask rank …: done, 0 tokens".
  it('run offline (no ANTHROPIC_API_KEY): says it ran on fallbacks as the cassette has no answers for it, counts no model call, and shows its task as a task', async () => {
    const run = microtask(['run', 'triage', '--flows', './flows.js', '--input', 'issues.json'], { MICROTASK_STATE_DIR: join(dir, 'state-offline') });
    expect(await run.exited, run.stderr()).toBe(0);
    expect(JSON.parse(run.stdout())).toMatchObject({ summary: 'no summary: the model did not answer' });
    const err = run.stderr();
    expect(err).toMatch(/triage (triage-\S+): done; 0 model calls, 0 tokens/);
    expect(err).toMatch(/^hint: ran offline .*4 model requests.* no answer on the offline cassette.*fallbacks.*ANTHROPIC_API_KEY/m);
    const rank = err.split('\n').filter((line) => line.includes('/rank'));
    expect(rank, err).toEqual([expect.stringMatching(/^ +task rank triage-\S+\/rank: done, \d+ ms$/)]);
    expect(err).not.toMatch(/microtask rank/);
  });

  it('a daemon and a worker with --flows serve it over NATS: started by the client, it survives the daemon killed mid-flow; `microtask flows` and the inspector show it', async () => {
    nats = await startNatsServer();
    // The summary answers slowly: the daemon is killed while its flow waits for it.
    model = await triageModel(3_000);
    const env = { ANTHROPIC_API_KEY: 'sk-test', ANTHROPIC_BASE_URL: model.url, NATS_URL: nats.url, MICROTASK_STATE_DIR: join(dir, 'state-nats'), MICROTASK_MAX_RETRIES: '0', MICROTASK_LEASE_MS: '2000' };
    const worker = microtask(['worker', '--flows', './flows.js'], env);
    const daemon = microtask(['daemon', '--flows', './flows.js', '--no-inspector'], env);
    await until(() => daemon.stderr().includes('daemon ready') || undefined, 'the daemon to be ready', 20_000);

    const client = start('start.js', ['issues.json'], { NATS_URL: nats.url });
    await until(() => model!.requests.find((r) => !r.body.tools), 'the summary to be asked for', 20_000);
    const triageCalls = model.requests.filter((r) => r.body.tools).length;
    daemon.child.kill('SIGKILL');
    await daemon.exited;
    // MICROTASK_FLOWS does what --flows does; the new daemon takes the flow over (its lease lapsed) and ends it.
    const again = microtask(['daemon', '--inspector-port', '0'], { ...env, MICROTASK_FLOWS: './flows.js' });

    expect(await client.exited, client.stderr()).toBe(0);
    const done = JSON.parse(client.stdout());
    expect(done).toMatchObject({ status: 'done', summary: 'Fix the login 500 first.', ranked, triaged });
    // The triage calls finished before the crash were not paid for again, and `rank` ran once (on the worker).
    expect(model.requests.filter((r) => r.body.tools).length).toBe(triageCalls);
    expect(await rankRuns(done.flowId)).toEqual([ranked]);
    expect(worker.stderr()).toContain('task done');

    const listed = await runCli(['flows', '--json'], { NATS_URL: nats.url });
    expect(JSON.parse(listed.stdout)).toEqual([expect.objectContaining({ flowId: done.flowId, pattern: 'triage', status: 'done' })]);
    // Its statechart is on the daemon's inspector page, with the built-in patterns'.
    const inspector = await until(() => /"inspector":"(http:[^"]+)"/.exec(again.stderr())?.[1], "the new daemon's inspector");
    const machines = (await (await fetch(new URL('/api/machines', inspector))).json()) as { machines: string[] };
    expect(machines.machines).toEqual(expect.arrayContaining(['triage', 'parallel']));
    expect((await fetch(new URL('/api/machines/triage', inspector))).status).toBe(200);
    again.child.kill('SIGTERM');
    worker.child.kill('SIGTERM');
    expect(await again.exited, again.stderr()).toBe(0);
    expect(await worker.exited, worker.stderr()).toBe(0);
  });

  it('a module that is missing, fails to import, exports no flows or a wrong definition: one line with its code, exit 2', async () => {
    const bad = await mkdtemp(join(tmpdir(), 'own-flow-bad-'));
    await writeFile(join(bad, 'throws.mjs'), "throw new Error('no config here');\n");
    await writeFile(join(bad, 'empty.mjs'), 'export const answers = {};\n');
    await writeFile(join(bad, 'flows.ts'), 'export const flows: unknown[] = [];\n');
    await writeFile(join(bad, 'badName.mjs'), "export const flows = [{ name: 'Triage Issues', version: 1, input: { safeParse() {} }, machine: () => ({}) }];\n");
    await writeFile(join(bad, 'taken.mjs'), "export const flows = [{ name: 'parallel', version: 1, input: { safeParse() {} }, machine: () => ({ provide() {} }) }];\n");
    await writeFile(join(bad, 'noMachine.mjs'), "export const flows = [{ name: 'triage', version: 1, input: { safeParse() {} }, machine: () => ({}) }];\n");
    const cases: Array<[string[], Record<string, string>, RegExp]> = [
      [['daemon', '--no-inspector', '--flows', join(bad, 'nope.js')], {}, /^microtask: --flows \S+nope\.js: no such file .*\(FLOWS_MODULE_NOT_FOUND\)$/],
      [['run', 'triage', '-i', 'examples/microtask.json'], { MICROTASK_FLOWS: join(bad, 'throws.mjs') }, /importing it failed: no config here \(FLOWS_MODULE_FAILED\)$/],
      [['daemon', '--no-inspector', '--flows', join(bad, 'empty.mjs')], {}, /it exports no `flows`.*\(INVALID_FLOWS_MODULE\)$/],
      [['resume', 'some-flow', '--flows', join(bad, 'flows.ts')], {}, /Unknown file extension "\.ts".*compile it to JavaScript.*\(FLOWS_MODULE_FAILED\)$/],
      [['daemon', '--no-inspector', '--flows', join(bad, 'badName.mjs')], {}, /flow "Triage Issues": a name is lowercase letters.*\(INVALID_FLOW_DEFINITION\)$/],
      [['daemon', '--no-inspector', '--flows', join(bad, 'taken.mjs')], {}, /flow "parallel" is defined twice.*\(INVALID_FLOW_DEFINITION\)$/],
      [['worker', '--flows', join(bad, 'noMachine.mjs')], { NATS_URL: 'nats://127.0.0.1:1' }, /must return an XState v5 machine.*\(INVALID_FLOW_DEFINITION\)$/],
    ];
    for (const [args, env, message] of cases) {
      const ran = await runCli(args, { MICROTASK_STATE_DIR: join(bad, 'state'), ...env });
      expect(ran.code, `${args.join(' ')}: ${ran.stderr}`).toBe(2);
      const lines = ran.stderr.trimEnd().split('\n');
      expect(lines, ran.stderr).toHaveLength(1);
      expect(lines[0]).toMatch(message);
    }
  });
});
