import { readdir, readFile } from 'node:fs/promises';
import { describe, expect, it } from 'vitest';
import { createActor, toPromise } from 'xstate';
import { MicrotaskRunner } from '../src/actors/microtask.js';
import type { MicrotaskResult } from '../src/contracts/microtask.js';
import { AnthropicModel } from '../src/actors/model/AnthropicModel.js';
import { createRemoteMicrotaskLogic, type RemoteMicrotaskOptions } from '../src/actors/remoteMicrotask.js';
import { KvResultsStore } from '../src/bus/KvResultsStore.js';
import { connectNatsBus, type NatsBus } from '../src/bus/NatsBus.js';
import { subjects } from '../src/bus/subjects.js';
import { createLogger } from '../src/log.js';
import { isStoreUnavailable } from '../src/persistence/StoreUnavailableError.js';
import { reply, startFakeAnthropic, type FakeAnthropic } from '../src/testing/fakeAnthropic.js';
import { startNatsServer, type NatsServer } from '../src/testing/natsServer.js';
import { startWorker, type Worker } from '../src/worker.js';

// Issue 11 over NATS: a daemon's microtask actors and a worker, each on its own connection
// to a real nats-server that restarts or freezes while tasks are answered. The model is the
// real SDK against the fake Anthropic server, which counts the calls paid.

const queueOptions = { ackWaitMs: 10_000, maxDeliver: 5, deadLetterSubject: 'microtask.tasks.dead' };
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Setup extends AsyncDisposable {
  daemonBus: NatsBus;
  worker: Worker;
  /** Starts the microtask actor of a flow (as the daemon does) and returns its outcome. */
  run(key: string, timeoutMs: number): Promise<MicrotaskResult>;
}

async function setUp(
  nats: NatsServer,
  model: FakeAnthropic,
  options: {
    storeRetryMs?: number;
    remote?: Partial<RemoteMicrotaskOptions>;
    workerQueue?: Partial<typeof queueOptions>;
    /** Collects the worker's warnings. */
    workerLog?: string[];
  } = {},
): Promise<Setup> {
  const connect = () => connectNatsBus({ servers: [nats.url], reconnectTimeWaitMs: 100 });
  const daemonBus = await connect();
  const workerBus = await connect();
  const results = new KvResultsStore(await workerBus.keyValue('results'));
  const worker = await startWorker({
    queue: await workerBus.workQueue('tasks', { ...queueOptions, ...options.workerQueue }),
    runner: new MicrotaskRunner({
      model: new AnthropicModel({ apiKey: 'k', baseURL: model.url, model: 'm', maxRetries: 0 }),
      results,
      ...(options.storeRetryMs ? { storeRetryMs: options.storeRetryMs } : {}),
    }),
    results,
    announce: (key, result) => workerBus.publish(subjects().taskResult(key), JSON.stringify(result)),
    concurrency: 8,
    heartbeatMs: 1_000,
    ...(options.workerLog ? { logger: createLogger('warn', { write: (line: string) => void options.workerLog!.push(line) }) } : {}),
  });
  const logic = createRemoteMicrotaskLogic({
    bus: daemonBus,
    queue: await daemonBus.workQueue('tasks', queueOptions),
    results: await daemonBus.keyValue('results'),
    pollMs: 500,
    ...options.remote,
  });
  return {
    daemonBus,
    worker,
    run: (key, timeoutMs) =>
      toPromise(createActor(logic, { input: { taskType: 'summarize', key, system: 'Summarize.', prompt: `Summarize ${key}.`, timeoutMs } }).start()),
    [Symbol.asyncDispose]: async () => {
      await worker.stop();
      await workerBus.close();
      await daemonBus.close();
    },
  };
}

/** Calls paid and flows that fell back: what the issue counts. */
function tally(model: FakeAnthropic, outcomes: PromiseSettledResult<MicrotaskResult>[]) {
  return {
    calls: model.requests.length,
    fallbacks: outcomes.filter((o) => o.status === 'fulfilled' && !o.value.success).length,
    rejected: outcomes.filter((o) => o.status === 'rejected').length,
  };
}

/** The pid of a test nats-server, found by its store directory (unique to it) on its command line. */
async function pidOf(nats: NatsServer): Promise<number> {
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const cmdline = await readFile(`/proc/${entry}/cmdline`, 'utf8').catch(() => '');
    if (cmdline.startsWith('nats-server') || cmdline.includes('/nats-server\0')) {
      if (cmdline.split('\0').includes(nats.storeDir)) return Number(entry);
    }
  }
  throw new Error(`no nats-server process with store ${nats.storeDir} found in /proc`);
}

describe('a bus that restarts or stalls while microtasks run (issue 11)', () => {
  it('nats-server restarted (same store, same port) in the middle of N tasks: N model calls, no fallback', async () => {
    const N = 24;
    await using nats = await startNatsServer();
    await using model = await startFakeAnthropic({ replies: () => reply.text('the answer', { delayMs: 700, usage: { input_tokens: 5, output_tokens: 3 } }) });
    await using setup = await setUp(nats, model);

    // Half the tasks before the restart, the other half enqueued while the server is down.
    const outcomes: Promise<MicrotaskResult>[] = [];
    for (let i = 0; i < N / 2; i++) outcomes.push(setup.run(`flow-restart/task/${i}`, 30_000));
    while (model.requests.length < 4) await sleep(10);
    await sleep(300); // calls in flight: they answer while the server is down
    await nats.stop();
    for (let i = N / 2; i < N; i++) outcomes.push(setup.run(`flow-restart/task/${i}`, 30_000));
    await sleep(1_500);
    await nats.start();

    const settled = await Promise.allSettled(outcomes);
    expect(tally(model, settled)).toEqual({ calls: N, fallbacks: 0, rejected: 0 });
    for (const o of settled) expect(o).toMatchObject({ status: 'fulfilled', value: { success: true, result: 'the answer' } });
  }, 90_000);

  it('nats-server frozen (SIGSTOP, then SIGCONT within the deadline) while tasks are enqueued and answered: no fallback, no call paid twice', async () => {
    const N = 16;
    await using nats = await startNatsServer();
    await using model = await startFakeAnthropic({ replies: () => reply.text('the answer', { delayMs: 500 }) });
    await using setup = await setUp(nats, model);
    const pid = await pidOf(nats);

    const outcomes: Promise<MicrotaskResult>[] = [];
    for (let i = 0; i < N / 2; i++) outcomes.push(setup.run(`flow-stall/task/${i}`, 40_000));
    while (model.requests.length < 2) await sleep(10);
    // Longer than a JetStream request's timeout (5 s): KV reads, puts and enqueues time out.
    process.kill(pid, 'SIGSTOP');
    try {
      for (let i = N / 2; i < N; i++) outcomes.push(setup.run(`flow-stall/task/${i}`, 40_000));
      await sleep(7_000);
    } finally {
      process.kill(pid, 'SIGCONT');
    }

    const settled = await Promise.allSettled(outcomes);
    expect(tally(model, settled)).toEqual({ calls: N, fallbacks: 0, rejected: 0 });
  }, 90_000);

  it('a worker whose store stays down past its retries does not ack: the task comes back to it, answered from memory, not paid twice', async () => {
    await using nats = await startNatsServer();
    await using model = await startFakeAnthropic({ replies: () => reply.text('the answer', { delayMs: 800 }) });
    const workerLog: string[] = [];
    await using setup = await setUp(nats, model, { storeRetryMs: 500, workerQueue: { ackWaitMs: 2_000 }, workerLog });

    // A short deadline: the worker retries the store until then (or 500 ms after the answer), no longer.
    const outcome = setup.run('flow-down/task/0', 2_000);
    while (model.requests.length < 1) await sleep(10);
    await nats.stop();
    // The answer comes, its store fails (a KV put times out after 5 s) for longer than the worker retries it.
    await sleep(7_000);
    await nats.start();

    expect(await outcome).toMatchObject({ success: true, result: 'the answer' });
    expect(model.requests).toHaveLength(1);
    // It did give up storing it while the server was down, and did not ack.
    expect(workerLog.join('')).toContain('results store unavailable: the task is not acked');
  }, 60_000);

  it('a bus that stays down past the deadline stops the microtask with StoreUnavailableError, never a fallback', async () => {
    await using nats = await startNatsServer();
    await using model = await startFakeAnthropic({ replies: () => reply.text('never') });
    await using setup = await setUp(nats, model, { remote: { graceMs: 300, busOutageMs: 1_000 } });
    await setup.worker.stop(); // nobody answers: the flow waits on the bus

    const outcome = setup.run('flow-gone/task/0', 1_000).then(
      (result) => ({ notRejected: result }),
      (e: unknown) => e,
    );
    await sleep(300);
    await nats.stop();
    const error = await outcome;
    expect(isStoreUnavailable(error)).toBe(true);
    expect((error as Error).message).toMatch(/^results store unavailable: /);
    expect((error as Error).message).not.toContain('\n');
    expect(model.requests).toHaveLength(0);
  }, 60_000);
});
