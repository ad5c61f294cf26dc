import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import type { ResultsStore } from '../src/actors/ResultsStore.js';
import { createTaskLogic, defineTask, TaskRunner, type Tasks } from '../src/actors/task.js';
import { FlowHost } from '../src/flowHost.js';
import { provideFlows } from '../src/flows.js';
import { checkFlowsModule, FlowsModuleError } from '../src/flowsModule.js';
import { silentLogger } from '../src/log.js';
import { LmdbResultsStore } from '../src/persistence/LmdbResultsStore.js';
import { LmdbSnapshotStore } from '../src/persistence/LmdbSnapshotStore.js';
import { LmdbStore } from '../src/persistence/LmdbStore.js';
import { scripted } from './support/flows.js';
import { countingTasks, enrichFlow } from './support/taskFlows.js';
import { createActor, toPromise } from 'xstate';
import { MicrotaskRunner } from '../src/actors/microtask.js';
import { ScriptedModel } from '../src/actors/model/ScriptedModel.js';
import { createRemoteTaskLogic } from '../src/actors/remoteTask.js';
import { KvResultsStore } from '../src/bus/KvResultsStore.js';
import { connectNatsBus } from '../src/bus/NatsBus.js';
import { MemoryResultsStore } from '../src/actors/ResultsStore.js';
import type { MicrotaskResult } from '../src/contracts/microtask.js';
import { startNatsServer } from '../src/testing/natsServer.js';
import { startWorker } from '../src/worker.js';

async function embedded() {
  const dir = await mkdtemp(join(tmpdir(), 'tasks-'));
  const db = await LmdbStore.open(dir);
  const store = await LmdbSnapshotStore.open(db);
  const results = await LmdbResultsStore.open(db);
  const { microtask } = scripted(['unused']);
  /** A FlowHost of this process on the database, its tasks run by a runner over `results` (the database's by default). */
  const host = (tasks: Tasks, over: ResultsStore = results) =>
    new FlowHost({
      flows: provideFlows({ microtask, task: createTaskLogic(new TaskRunner({ tasks, results: over, logger: silentLogger })) }, [enrichFlow]),
      store,
      logger: silentLogger,
      outRoot: dir,
    });
  return { dir, db, store, results, host };
}

describe('tasks run in the process (embedded)', () => {
  it('a task runs once, its result stored under its key, and its envelope reaches the machine', async () => {
    const s = await embedded();
    const runs: string[] = [];
    const host = s.host(countingTasks(runs));
    const flowId = await host.start('enrich', { text: '  Hello World ' });
    const record = await host.finished(flowId)!;
    expect(record.status).toBe('done');
    const output = record.output as { result: { normalized: unknown; score: unknown } };
    expect(output.result.normalized).toMatchObject({ success: true, taskType: 'normalize', key: `${flowId}/normalize`, result: 'hello world', cached: false });
    expect(output.result.score).toMatchObject({ success: true, result: { length: 11 } });
    expect(runs).toEqual([`normalize ${flowId}/normalize`, 'score']);
    expect(await s.results.get(`${flowId}/normalize`)).toMatchObject({ success: true, result: 'hello world' });
    await host.stop();
    await s.db.close();
  });

  it('a host killed after a task result is stored, before its flow heard of it, resumes without running the task again', async () => {
    const s = await embedded();
    const runs: string[] = [];
    // The first process dies right after the store of `normalize` is on disk: the flow never hears of it.
    let stored = false;
    const dying: ResultsStore = {
      get: (key) => s.results.get(key),
      put: async (key, result) => {
        await s.results.put(key, result);
        stored = true;
        await new Promise<never>(() => undefined);
      },
    };
    const first = s.host(countingTasks(runs), dying);
    const flowId = await first.start('enrich', { text: 'Once' });
    while (!stored) await new Promise((r) => setTimeout(r, 5));
    // Its saved snapshot still has `normalize` in flight: a resume runs that actor again.
    expect((await s.store.load(flowId))!.record.state).toBe('normalizing');

    const second = s.host(countingTasks(runs));
    expect(await second.resume(flowId)).toBe('resumed');
    const record = await second.finished(flowId)!;
    const output = record.output as { result: { normalized: unknown; score: unknown } };
    // Found under its key: the same envelope, marked cached, and the function not called again.
    expect(output.result.normalized).toMatchObject({ success: true, result: 'once', cached: true, durationMs: 0 });
    expect(output.result.score).toMatchObject({ success: true, result: { length: 4 } });
    expect(runs.filter((r) => r.startsWith('normalize'))).toEqual([`normalize ${flowId}/normalize`]);
    await second.stop();
    await s.db.close();
  });

  it('a throwing task is a failure the machine handles: the flow ends as its machine says; a failure is not stored as an answer', async () => {
    const s = await embedded();
    const runs: string[] = [];
    const host = s.host(countingTasks(runs));
    const flowId = await host.start('enrich', { text: 'boom' });
    const record = await host.finished(flowId)!;
    expect(record.status).toBe('done');
    expect((record.output as { result: { normalized: unknown } }).result.normalized).toMatchObject({
      success: false,
      taskType: 'normalize',
      error: { kind: 'task_failed', message: 'cannot normalize "boom"', retryable: false },
    });
    expect(runs).toEqual([`normalize ${flowId}/normalize`]);
    expect(await s.results.get(`${flowId}/normalize`)).toBeUndefined();
    await host.stop();
    await s.db.close();
  });
});

describe('the task runner', () => {
  const results = () => new MemoryResultsStore();

  it('refuses, as failures naming the cause: an unknown name, input its schema refuses, input or output that is not JSON; and times a run out', async () => {
    const tasks: Tasks = {
      echo: defineTask({ input: z.object({ n: z.number() }), run: ({ n }) => ({ n }) }),
      date: defineTask({ input: z.object({}), run: () => ({ when: new Date(0) }) }),
      slow: defineTask({ input: z.unknown(), run: () => new Promise(() => undefined), timeoutMs: 50 }),
    };
    const runner = new TaskRunner({ tasks, results: results() });
    expect(await runner.run({ task: 'nope', key: 'f/1' })).toMatchObject({
      success: false,
      error: { kind: 'unknown_task', message: expect.stringMatching(/^no task named "nope" here \(known: echo, date, slow\)/) },
    });
    expect(await runner.run({ task: 'echo', key: 'f/2', input: { n: 'one' } })).toMatchObject({
      success: false,
      error: { kind: 'invalid_request', message: expect.stringContaining('task echo: its input schema refused the input') },
    });
    expect(await runner.run({ task: 'echo', key: 'f/3', input: { n: 1, at: new Date() } })).toMatchObject({
      success: false,
      error: { kind: 'invalid_request', message: expect.stringMatching(/task echo: its input is not JSON data: .*input\.at/) },
    });
    expect(await runner.run({ task: 'date', key: 'f/4', input: {} })).toMatchObject({
      success: false,
      error: { kind: 'task_failed', message: expect.stringMatching(/task date returned a value that is not JSON data: .*output\.when/) },
    });
    expect(await runner.run({ task: 'slow', key: 'f/5' })).toMatchObject({ success: false, error: { kind: 'timeout' } });
    expect(await runner.run({ task: 'echo', key: 'f/6', input: { n: 1 } })).toMatchObject({ success: true, result: { n: 1 } });
  });

  it("a task's context signal is aborted when its run is cancelled; the run ends `cancelled` at once", async () => {
    let aborted = false;
    const tasks: Tasks = {
      wait: defineTask({
        input: z.unknown(),
        run: (_input, { signal }) => new Promise(() => signal.addEventListener('abort', () => (aborted = true))),
      }),
    };
    const controller = new AbortController();
    const running = new TaskRunner({ tasks, results: results() }).run({ task: 'wait', key: 'f/1' }, controller.signal);
    await new Promise((r) => setTimeout(r, 20));
    controller.abort(new Error('flow cancelled'));
    expect(await running).toMatchObject({ success: false, error: { kind: 'cancelled' } });
    expect(aborted).toBe(true);
  });
});

describe("a module's tasks are checked at load", () => {
  const flows = [enrichFlow];
  it.each([
    [{ flows, tasks: [] }, /`tasks` must be an object of tasks by name/],
    [{ flows, tasks: { 'not a name': defineTask({ input: z.unknown(), run: (): number => 1 }) } }, /tasks\["not a name"\]: a task's name is letters/],
    [{ flows, tasks: { normalize: { run: (): number => 1 } } }, /tasks\.normalize\.input is not a zod schema/],
    [{ flows, tasks: { normalize: { input: z.unknown() } } }, /tasks\.normalize\.run must be a function/],
    [{ flows, tasks: { normalize: { input: z.unknown(), run: (): number => 1, timeoutMs: 0 } } }, /tasks\.normalize\.timeoutMs must be a whole number/],
  ] as Array<[Record<string, unknown>, RegExp]>)('%#: INVALID_FLOWS_MODULE, one line', (exported, message) => {
    let error: unknown;
    try {
      checkFlowsModule('./flows.js', exported);
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(FlowsModuleError);
    expect((error as FlowsModuleError).code).toBe('INVALID_FLOWS_MODULE');
    expect((error as Error).message).toMatch(message);
    expect((error as Error).message).toMatch(/^--flows \.\/flows\.js: [^\n]+ \(INVALID_FLOWS_MODULE\)$/);
  });

  it('a valid one keeps its tasks', () => {
    const tasks = countingTasks([]);
    expect(checkFlowsModule('./flows.js', { flows, tasks }).tasks).toBe(tasks);
  });
});

describe('tasks on workers, over a real nats-server', { timeout: 60_000 }, () => {
  /** A nats-server, a worker whose module has `tasks` (none: no task runner), and the daemon's side: the remote task actor. */
  async function overNats(tasks: Tasks | undefined) {
    const nats = await startNatsServer();
    const daemonBus = await connectNatsBus({ servers: [nats.url] });
    const workerBus = await connectNatsBus({ servers: [nats.url] });
    // One delivery: a failure is stored for its flow at once (its last chance).
    const queueOptions = { ackWaitMs: 10_000, maxDeliver: 1, deadLetterSubject: 'microtask.tasks.dead' };
    const results = new KvResultsStore(await workerBus.keyValue('results'));
    const worker = await startWorker({
      queue: await workerBus.workQueue('tasks', queueOptions),
      runner: new MicrotaskRunner({ model: new ScriptedModel(() => 'unused'), results }),
      ...(tasks ? { tasks: new TaskRunner({ tasks, results }) } : {}),
      results,
      concurrency: 4,
    });
    const task = createRemoteTaskLogic({ queue: await daemonBus.workQueue('tasks', queueOptions), results: await daemonBus.keyValue('results'), defaultTimeoutMs: 20_000 });
    const run = (input: { task: string; key: string; input?: unknown }): Promise<MicrotaskResult> => toPromise(createActor(task, { input }).start());
    return {
      results,
      task,
      run,
      async [Symbol.asyncDispose]() {
        await worker.stop();
        await workerBus.close();
        await daemonBus.close();
        await nats.close();
      },
    };
  }

  it('a flow on a host whose tasks go to the queue: each runs once on the worker, stored in the bucket; a later run of the key gets it without running it', async () => {
    const runs: string[] = [];
    await using s = await overNats(countingTasks(runs));
    const dir = await mkdtemp(join(tmpdir(), 'tasks-nats-'));
    const host = new FlowHost({
      flows: provideFlows({ microtask: scripted(['unused']).microtask, task: s.task }, [enrichFlow]),
      store: await LmdbSnapshotStore.open(await LmdbStore.open(dir)),
      logger: silentLogger,
      outRoot: dir,
    });
    const flowId = await host.start('enrich', { text: ' Over NATS ' });
    const record = await host.finished(flowId)!;
    const output = record.output as { result: { normalized: unknown; score: unknown } };
    expect(output.result.normalized).toMatchObject({ success: true, taskType: 'normalize', result: 'over nats', cached: false });
    expect(output.result.score).toMatchObject({ success: true, result: { length: 9 } });
    expect(runs).toEqual([`normalize ${flowId}/normalize`, 'score']);
    expect(await s.results.get(`${flowId}/normalize`)).toMatchObject({ success: true, result: 'over nats' });
    await host.stop();

    // A resumed flow asks again under the same key: the stored result, and the job sent with the read runs nothing.
    expect(await s.run({ task: 'normalize', key: `${flowId}/normalize`, input: { text: 'other' } })).toMatchObject({ success: true, result: 'over nats', cached: true });
    await new Promise((r) => setTimeout(r, 300));
    expect(runs).toHaveLength(2);
  });

  it("a task the worker's module lacks, or a worker with no tasks at all: a failure naming the task, at once (not a wait for the deadline)", async () => {
    for (const tasks of [countingTasks([]), undefined]) {
      await using s = await overNats(tasks);
      const started = Date.now();
      const result = await s.run({ task: 'enrichWithCrm', key: 'flow-u/crm', input: {} });
      expect(result).toMatchObject({ success: false, taskType: 'enrichWithCrm', error: { kind: 'unknown_task', message: expect.stringContaining('no task named "enrichWithCrm" here') } });
      expect(result.error!.message).toContain('--flows');
      expect(Date.now() - started).toBeLessThan(5_000);
    }
  });

  it('a worker whose module lacks the task puts it back on the queue while deliveries remain: a worker that has it runs it', async () => {
    const nats = await startNatsServer();
    const daemonBus = await connectNatsBus({ servers: [nats.url] });
    const workerBus = await connectNatsBus({ servers: [nats.url] });
    const queueOptions = { ackWaitMs: 10_000, maxDeliver: 20, deadLetterSubject: 'microtask.tasks.dead' };
    const results = new KvResultsStore(await workerBus.keyValue('results'));
    const worker = async (tasks: Tasks) =>
      startWorker({
        queue: await workerBus.workQueue('tasks', queueOptions),
        runner: new MicrotaskRunner({ model: new ScriptedModel(() => 'unused'), results }),
        tasks: new TaskRunner({ tasks, results }),
        results,
        concurrency: 1,
        baseRetryDelayMs: 50,
      });
    try {
      // An older worker, deployed before the module had `score`, takes the job first.
      const older = await worker({});
      const task = createRemoteTaskLogic({ queue: await daemonBus.workQueue('tasks', queueOptions), results: await daemonBus.keyValue('results'), defaultTimeoutMs: 20_000 });
      const running = toPromise(createActor(task, { input: { task: 'score', key: 'flow-r/score', input: { text: 'abc' } } }).start());
      await new Promise((r) => setTimeout(r, 300));
      await older.stop();
      const runs: string[] = [];
      const newer = await worker(countingTasks(runs));
      expect(await running).toMatchObject({ success: true, result: { length: 3 } });
      expect(runs).toEqual(['score']);
      await newer.stop();
    } finally {
      await workerBus.close();
      await daemonBus.close();
      await nats.close();
    }
  });

  it('a task that throws on the worker: its failure reaches the flow; it is not an answer, so a later run runs it again', async () => {
    const runs: string[] = [];
    await using s = await overNats(countingTasks(runs));
    const failed = await s.run({ task: 'normalize', key: 'flow-b/normalize', input: { text: 'boom' } });
    expect(failed).toMatchObject({ success: false, error: { kind: 'task_failed', message: 'cannot normalize "boom"' } });
    const again = await s.run({ task: 'normalize', key: 'flow-b/normalize', input: { text: 'boom' } });
    expect(again).toMatchObject({ success: false, error: { kind: 'task_failed' }, cached: false });
    expect(runs).toHaveLength(2);
  });
});
