import { spawn, type ChildProcess } from 'node:child_process';
import { connect } from '@nats-io/transport-node';
import { afterAll, describe, expect, it } from 'vitest';
import { createRemoteMicrotaskLogic } from '../src/actors/remoteMicrotask.js';
import { connectNatsBus } from '../src/bus/NatsBus.js';
import { Daemon } from '../src/daemon/Daemon.js';
import { KvSnapshotStore } from '../src/persistence/KvSnapshotStore.js';
import { provideFlows } from '../src/flows.js';
import { silentLogger } from '../src/log.js';
import { reply, startFakeAnthropic } from '../src/testing/fakeAnthropic.js';
import { startNatsServer } from '../src/testing/natsServer.js';

// Workers as a user runs them: `microtask worker` processes (the built CLI), killed for real.
const CLI = new URL('../dist/cli.js', import.meta.url).pathname;
const children: ChildProcess[] = [];
afterAll(() => children.forEach((c) => c.kill('SIGKILL')));

const ACK_WAIT_MS = 1_500;

function startWorkerProcess(env: Record<string, string>): ChildProcess {
  const child = spawn(process.execPath, [CLI, 'worker', '--concurrency', '2'], {
    env: { PATH: process.env.PATH ?? '', MICROTASK_LOG_LEVEL: 'warn', MICROTASK_ACK_WAIT_MS: String(ACK_WAIT_MS), ...env },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  children.push(child);
  return child;
}

const until = async (condition: () => boolean, what: string, timeoutMs = 20_000) => {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
};

describe('workers that die', () => {
  it('a task whose worker was SIGKILLed mid-call is finished by another worker, with one more model call at most', async () => {
    await using nats = await startNatsServer();
    // The first call is slow (the worker dies during it); any later one answers at once.
    await using model = await startFakeAnthropic({
      replies: (request) => (request.index === 0 ? reply.text('slow', { delayMs: 10_000 }) : reply.text('bug')),
    });
    const bus = await connectNatsBus({ servers: [nats.url], reconnectTimeWaitMs: 200 });
    const queueOptions = { ackWaitMs: ACK_WAIT_MS, maxDeliver: 5, deadLetterSubject: 'microtask.tasks.dead' };
    const daemon = new Daemon({
      bus,
      flows: provideFlows({
        microtask: createRemoteMicrotaskLogic({ bus, queue: await bus.workQueue('tasks', queueOptions), results: await bus.keyValue('results') }),
      }),
      store: new KvSnapshotStore(await bus.keyValue('snapshots')),
      logger: silentLogger,
      outRoot: '/nonexistent',
    });
    await daemon.start();
    const env = { NATS_URL: nats.url, ANTHROPIC_API_KEY: 'sk-test', ANTHROPIC_BASE_URL: model.url };
    const first = startWorkerProcess(env);

    const client = await connect({ servers: nats.url });
    const input = { taskType: 'classify', system: 'Classify the ticket.', prompt: 'Which class?', timeoutMs: 30_000 };
    const started = (await client.request('microtask.flow.start.microtask', JSON.stringify({ input }), { timeout: 5_000 })).json<any>();
    expect(started.ok).toBe(true);

    await until(() => model.requests.length === 1, 'the first worker to call the model');
    first.kill('SIGKILL');
    startWorkerProcess(env);

    let status: any;
    for (let i = 0; i < 250 && status?.status !== 'done'; i++) {
      status = (await client.request('microtask.flow.get', JSON.stringify({ flowId: started.flowId }), { timeout: 5_000 })).json<any>();
      if (status.status !== 'done') await new Promise((r) => setTimeout(r, 100));
    }
    expect(status).toMatchObject({ status: 'done', output: { status: 'done', result: 'bug' } });
    // The killed worker's call, and the one the second worker made: no more.
    expect(model.requests.length).toBeLessThanOrEqual(2);
    expect(model.requests[0]!.closedEarly).toBe(true);

    await client.close();
    await daemon.stop();
    await bus.close();
  }, 60_000);

  it('a task that fails on every delivery goes to the dead letters, and its flow falls back', async () => {
    await using nats = await startNatsServer();
    await using model = await startFakeAnthropic({ replies: () => reply.overloaded() });
    const bus = await connectNatsBus({ servers: [nats.url], reconnectTimeWaitMs: 200 });
    const queueOptions = { ackWaitMs: ACK_WAIT_MS, maxDeliver: 2, deadLetterSubject: 'microtask.tasks.dead' };
    const daemon = new Daemon({
      bus,
      flows: provideFlows({
        microtask: createRemoteMicrotaskLogic({ bus, queue: await bus.workQueue('tasks', queueOptions), results: await bus.keyValue('results') }),
      }),
      store: new KvSnapshotStore(await bus.keyValue('snapshots')),
      logger: silentLogger,
      outRoot: '/nonexistent',
    });
    await daemon.start();
    const client = await connect({ servers: nats.url });
    const dead = client.subscribe('microtask.tasks.dead', { max: 1 });
    startWorkerProcess({ NATS_URL: nats.url, ANTHROPIC_API_KEY: 'sk-test', ANTHROPIC_BASE_URL: model.url, MICROTASK_MAX_DELIVER: '2' });

    const input = { taskType: 'classify', system: 'Classify the ticket.', prompt: 'Which class?', timeoutMs: 30_000 };
    const started = (await client.request('microtask.flow.start.microtask', JSON.stringify({ input }), { timeout: 5_000 })).json<any>();
    for await (const m of dead) {
      expect(m.json()).toMatchObject({ id: started.flowId, deliveryCount: 2, reason: expect.stringMatching(/^unavailable: /) });
    }
    let status: any;
    for (let i = 0; i < 100 && status?.status !== 'failed'; i++) {
      status = (await client.request('microtask.flow.get', JSON.stringify({ flowId: started.flowId }), { timeout: 5_000 })).json<any>();
      if (status.status === 'running') await new Promise((r) => setTimeout(r, 100));
    }
    expect(status).toMatchObject({ status: 'failed', output: { status: 'failed', result: { fallback: true }, envelope: { error: { kind: 'unavailable' } } } });
    // One call per delivery: the worker's model port does not retry on its own.
    expect(model.requests).toHaveLength(2);

    await client.close();
    await daemon.stop();
    await bus.close();
  }, 60_000);
});
