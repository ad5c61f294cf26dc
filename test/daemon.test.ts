import { mkdtemp, readdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { handWrittenAnswer } from '../examples/offline/answers.js';
import { MicrotaskRunner } from '../src/actors/microtask.js';
import { ScriptedModel } from '../src/actors/model/ScriptedModel.js';
import { createRemoteMicrotaskLogic } from '../src/actors/remoteMicrotask.js';
import { KvResultsStore } from '../src/bus/KvResultsStore.js';
import { subjects } from '../src/bus/subjects.js';
import { connectNatsBus, type NatsBus } from '../src/bus/NatsBus.js';
import { Daemon } from '../src/daemon/Daemon.js';
import { KvSnapshotStore } from '../src/persistence/KvSnapshotStore.js';
import { provideFlows } from '../src/flows.js';
import { silentLogger } from '../src/log.js';
import { answerSchemas } from '../src/contracts/answers.js';
import type { Worker } from '../src/worker.js';
import { startNatsServer, type NatsServer } from '../src/testing/natsServer.js';
import { startWorker } from '../src/worker.js';

// The daemon and a worker in this process over a real nats-server; the client side uses
// only the plain NATS client and the published protocol.
let server: NatsServer;
let daemonBus: NatsBus;
let workerBus: NatsBus;
let daemon: Daemon;
let worker: Worker;
let client: NatsConnection;
let outRoot: string;
const model = new ScriptedModel((request) => {
  // A slow answer for the outage test, so the flow is mid-way when the server stops.
  if (request.system.startsWith('You classify support tickets')) return { text: 'bug', delayMs: 1_500 };
  return handWrittenAnswer(request);
});

beforeAll(async () => {
  server = await startNatsServer();
  outRoot = await mkdtemp(join(tmpdir(), 'daemon-'));
  const bus = () => connectNatsBus({ servers: [server.url], reconnectTimeWaitMs: 200 });
  daemonBus = await bus();
  workerBus = await bus();
  const queueOptions = { ackWaitMs: 5_000, maxDeliver: 3, deadLetterSubject: 'microtask.tasks.dead' };
  daemon = new Daemon({
    bus: daemonBus,
    flows: provideFlows({
      microtask: createRemoteMicrotaskLogic({
        bus: daemonBus,
        queue: await daemonBus.workQueue('tasks', queueOptions),
        results: await daemonBus.keyValue('results'),
      }),
    }),
    store: new KvSnapshotStore(await daemonBus.keyValue('snapshots')),
    logger: silentLogger,
    outRoot,
  });
  await daemon.start();
  const results = new KvResultsStore(await workerBus.keyValue('results'));
  worker = await startWorker({
    queue: await workerBus.workQueue('tasks', queueOptions),
    runner: new MicrotaskRunner({ model, results, answers: answerSchemas }),
    results,
    announce: (key, result) => workerBus.publish(subjects().taskResult(key), JSON.stringify(result)),
    concurrency: 4,
  });
  client = await connect({ servers: server.url, reconnectTimeWait: 200, maxReconnectAttempts: -1 });
});

afterAll(async () => {
  await client?.close();
  await worker?.stop();
  await daemon?.stop();
  await workerBus?.close();
  await daemonBus?.close();
  await server?.close();
});

const request = async (subject: string, payload: unknown) => {
  const data = typeof payload === 'string' ? payload : JSON.stringify(payload);
  return (await client.request(subject, data, { timeout: 10_000 })).json<any>();
};

/** The first message stored on `subject` in the flows stream, and every one after it, until `until` holds. */
async function replay(subject: string, until: (message: any) => boolean, timeoutMs: number) {
  const js = jetstream(client);
  const consumer = await js.consumers.get('MICROTASK_LOG_flows', { filter_subjects: subject });
  const seen: any[] = [];
  const messages = await consumer.consume();
  const timer = setTimeout(() => messages.stop(), timeoutMs);
  for await (const m of messages) {
    seen.push(m.json());
    if (until(seen.at(-1))) {
      clearTimeout(timer);
      messages.stop();
      return seen;
    }
  }
  throw new Error(`${subject}: not complete within ${timeoutMs} ms; got ${JSON.stringify(seen)}`);
}

/** The flow's history from the start, replayed from the stream: its events, then its done message. */
async function history(flowId: string, timeoutMs = 30_000) {
  const events = await replay(`microtask.flow.${flowId}.events`, (e) => e.status !== 'running', timeoutMs);
  const [done] = await replay(`microtask.flow.${flowId}.done`, () => true, timeoutMs);
  return { events, done };
}

describe('the daemon over NATS, driven by a plain NATS client', () => {
  it('builds a tool requested on microtask.toolbuild.request; its events arrive in order with no gaps', async () => {
    const spec = await import('../examples/api-tester.json', { with: { type: 'json' } });
    const answer = await request('microtask.toolbuild.request', spec.default);
    expect(answer).toMatchObject({ ok: true, flowId: expect.stringMatching(/^tool-builder-/) });
    const { events, done } = await history(answer.flowId);
    expect(done).toMatchObject({ flowId: answer.flowId, status: 'done', output: { status: 'done', name: 'api-tester' } });
    expect(events.map((e) => e.seq)).toEqual(events.map((_, i) => i + 1));
    expect(events[0]).toMatchObject({ flowId: answer.flowId, status: 'running' });
    expect(events.map((e) => e.state)).toContain('integrating');
    expect(events.at(-1)).toMatchObject({ status: 'done' });
    expect(await readdir(join(outRoot, 'api-tester', 'src'))).toEqual(['auth.js', 'cli.js', 'requests.js', 'validator.js']);

    const status = await request('microtask.flow.get', { flowId: answer.flowId });
    expect(status).toMatchObject({ ok: true, flowId: answer.flowId, pattern: 'tool-builder', status: 'done', output: { status: 'done' } });
  });

  it('gives the first flowId again for a duplicate requestId', async () => {
    const input = (await import('../examples/feedback-loop.json', { with: { type: 'json' } })).default;
    const first = await request('microtask.flow.start.feedback-loop', { input, requestId: 'dup-1' });
    const second = await request('microtask.flow.start.feedback-loop', { input, requestId: 'dup-1' });
    expect(first.ok).toBe(true);
    expect(second).toEqual(first);
    const { done } = await history(first.flowId);
    expect(done.status).toBe('done');
  });

  it('answers each bad input with its code, logs nothing fatal, and keeps serving', async () => {
    expect(await request('microtask.toolbuild.request', 'not json{')).toMatchObject({ ok: false, error: { code: 'BAD_JSON' } });
    const wrong = await request('microtask.toolbuild.request', { name: 'x-tool', modules: [] });
    expect(wrong).toMatchObject({ ok: false, error: { code: 'INVALID_INPUT' } });
    expect(wrong.error.message).toMatch(/description/);
    expect(await request('microtask.flow.start.nope', { input: {} })).toMatchObject({ ok: false, error: { code: 'UNKNOWN_PATTERN' } });
    expect(await request('microtask.flow.start.parallel', { input: { tasks: [] } })).toMatchObject({
      ok: false,
      error: { code: 'INVALID_INPUT' },
    });
    expect(await request('microtask.flow.start.microtask', { input: { data: 'x'.repeat(300_000) } })).toMatchObject({
      ok: false,
      error: { code: 'TOO_LARGE' },
    });
    expect(await request('microtask.flow.get', { flowId: 'no-such-flow' })).toMatchObject({ ok: false, error: { code: 'FLOW_NOT_FOUND' } });
    expect(await request('microtask.flow.cancel', { id: 1 })).toMatchObject({ ok: false, error: { code: 'INVALID_INPUT' } });

    // No reply subject: still handled, and the error is published on microtask.errors.
    const errors = client.subscribe('microtask.errors', { max: 1 });
    client.publish('microtask.flow.start.microtask', 'garbage');
    for await (const m of errors) expect(m.json()).toMatchObject({ subject: 'microtask.flow.start.microtask', error: { code: 'BAD_JSON' } });

    const input = (await import('../examples/microtask.json', { with: { type: 'json' } })).default;
    const ok = await request('microtask.flow.start.microtask', { input });
    expect(ok.ok).toBe(true);
    expect((await history(ok.flowId)).done.status).toBe('done');
  });

  // Issue 11: a payload nested 5,000 deep overflowed the stack (INTERNAL); it is refused for its depth.
  it('refuses a payload nested 5,000 deep with INVALID_INPUT naming the nesting limit, and keeps serving', async () => {
    const deepArray = `${'['.repeat(5_000)}${']'.repeat(5_000)}`;
    const deepObject = `${'{"a":'.repeat(5_000)}1${'}'.repeat(5_000)}`;
    for (const deep of [deepArray, deepObject]) {
      for (const [subject, payload] of [
        ['microtask.flow.start.microtask', `{"input":{"taskType":"summarize","system":"s","prompt":"p","data":${deep}}}`],
        ['microtask.flow.start.parallel', `{"input":${deep}}`],
        ['microtask.toolbuild.request', `{"name":"x-tool","description":"d","modules":${deep}}`],
      ] as const) {
        const answer = await request(subject, payload);
        expect(answer, subject).toMatchObject({ ok: false, error: { code: 'INVALID_INPUT' } });
        expect(answer.error.message, subject).toMatch(/nested deeper than 64 levels/);
      }
    }
    const input = (await import('../examples/microtask.json', { with: { type: 'json' } })).default;
    expect((await request('microtask.flow.start.microtask', { input })).ok).toBe(true);
  });

  it('accepts a request that starts with a UTF-8 byte order mark', async () => {
    const input = (await import('../examples/microtask.json', { with: { type: 'json' } })).default;
    const answer = await request('microtask.flow.start.microtask', `\uFEFF${JSON.stringify({ input })}`);
    expect(answer).toMatchObject({ ok: true, flowId: expect.stringMatching(/^microtask-/) });
    expect((await history(answer.flowId)).done.status).toBe('done');
  });

  it('cancels a running flow', async () => {
    const input = (await import('../examples/metacognitive.json', { with: { type: 'json' } })).default;
    const started = await request('microtask.flow.start.metacognitive', { input });
    const cancelled = await request('microtask.flow.cancel', { flowId: started.flowId });
    expect(cancelled).toEqual({ ok: true, flowId: started.flowId });
    expect((await history(started.flowId)).done).toMatchObject({ status: 'cancelled' });
    expect(await request('microtask.flow.cancel', { flowId: started.flowId })).toMatchObject({ ok: false, error: { code: 'FLOW_FINISHED' } });
  });

  it('completes a flow across a nats-server stop and start', async () => {
    const input = (await import('../examples/metacognitive.json', { with: { type: 'json' } })).default;
    const started = await request('microtask.flow.start.metacognitive', { input });
    const calls = model.calls.length;
    while (model.calls.length === calls) await new Promise((r) => setTimeout(r, 20));
    await server.stop();
    await new Promise((r) => setTimeout(r, 500));
    await server.start();
    // Like any client across an outage, retry until the connection and JetStream are back.
    const deadline = Date.now() + 30_000;
    for (;;) {
      const status = await request('microtask.flow.get', { flowId: started.flowId }).catch(() => undefined);
      if (status?.status && status.status !== 'running') break;
      if (Date.now() > deadline) throw new Error(`the flow did not finish after the outage: ${JSON.stringify(status)}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    const { done } = await history(started.flowId);
    expect(done).toMatchObject({ status: 'done', output: { status: 'done', result: 'bug' } });
  });

  it("withdraws a cancelled flow's queued tasks: a worker that takes them later calls no model", async () => {
    await worker.stop();
    const input = (await import('../examples/microtask.json', { with: { type: 'json' } })).default;
    const manager = await jetstreamManager(client);
    const queued = async () => (await manager.streams.info('MICROTASK_WQ_tasks')).state.messages;
    const started = await request('microtask.flow.start.microtask', { input });
    for (let i = 0; i < 100 && (await queued()) === 0; i++) await new Promise((r) => setTimeout(r, 20));
    expect(await queued()).toBe(1);
    expect(await request('microtask.flow.cancel', { flowId: started.flowId })).toEqual({ ok: true, flowId: started.flowId });
    expect((await history(started.flowId)).done).toMatchObject({ status: 'cancelled' });

    const late = new ScriptedModel(() => 'nobody wants this');
    const results = new KvResultsStore(await workerBus.keyValue('results'));
    const queue = await workerBus.workQueue('tasks', { ackWaitMs: 5_000, maxDeliver: 3, deadLetterSubject: 'microtask.tasks.dead' });
    worker = await startWorker({ queue, runner: new MicrotaskRunner({ model: late, results, answers: answerSchemas }), results, concurrency: 4 });
    // The queue empties (the task was taken and acked) without a model call.
    for (let i = 0; i < 100 && (await queued()) > 0; i++) await new Promise((r) => setTimeout(r, 50));
    expect(await queued()).toBe(0);
    expect(late.calls).toHaveLength(0);
  });
});

