import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MicrotaskRunner } from '../src/actors/microtask.js';
import { AnthropicModel } from '../src/actors/model/AnthropicModel.js';
import { MemoryResultsStore } from '../src/actors/ResultsStore.js';
import { createRemoteMicrotaskLogic } from '../src/actors/remoteMicrotask.js';
import { connectNatsBus, type NatsBus } from '../src/bus/NatsBus.js';
import { Daemon } from '../src/daemon/Daemon.js';
import { answersWith, fallbacksWith, provideFlows } from '../src/flows.js';
import { silentLogger } from '../src/log.js';
import { KvSnapshotStore } from '../src/persistence/KvSnapshotStore.js';
import { reply, startFakeAnthropic, type FakeAnthropic } from '../src/testing/fakeAnthropic.js';
import { startNatsServer, type NatsServer } from '../src/testing/natsServer.js';

// A microtask's `taskType` picks its fallback and its `answer` its schema, by name, and any
// NATS client chooses both (microtask.flow.start.microtask). Names of Object.prototype's
// members were found there: `__proto__` made the fallback a non-function, which crashed
// the daemon (an unhandled rejection once the task's deadline passed with no worker
// answer; a worker threw on every delivery), `constructor` made the fallback echo the
// input, and `answer: "constructor"` failed as `unknown` instead of unknown_answer_schema.
const PROTOTYPE_NAMES = ['__proto__', 'constructor', 'hasOwnProperty', 'toString', 'valueOf'];

describe('names of Object.prototype members in a microtask', () => {
  let server: FakeAnthropic;
  afterAll(async () => server?.close());

  it('a taskType gets the default fallback, an answer is an unknown schema (the runner a worker uses)', async () => {
    server = await startFakeAnthropic({ replies: () => reply.error(400, 'invalid_request_error', 'no') });
    const runner = new MicrotaskRunner({
      model: new AnthropicModel({ apiKey: 'test-key', baseURL: server.url, model: 'm', maxRetries: 0 }),
      results: new MemoryResultsStore(),
      answers: answersWith(),
      fallbacks: fallbacksWith(),
    });
    for (const name of PROTOTYPE_NAMES) {
      const failed = await runner.run({ taskType: name, key: `fallback/${name}`, system: 's', prompt: 'p' });
      expect(failed, name).toMatchObject({ success: false, error: { kind: 'invalid_request' }, fallback: { fallback: true, taskType: name } });
      const unknown = await runner.run({ taskType: 't', key: `answer/${name}`, system: 's', prompt: 'p', answer: name });
      expect(unknown, name).toMatchObject({ success: false, error: { kind: 'unknown_answer_schema' } });
    }
  });
});

describe('a daemon given such a taskType over NATS', () => {
  let nats: NatsServer;
  let bus: NatsBus;
  let daemon: Daemon;
  let client: NatsConnection;
  let outRoot: string;

  beforeAll(async () => {
    nats = await startNatsServer();
    outRoot = await mkdtemp(join(tmpdir(), 'proto-keys-'));
    bus = await connectNatsBus({ servers: [nats.url] });
    // No worker: the task's deadline passes and the daemon answers with the fallback itself.
    const microtask = createRemoteMicrotaskLogic({
      bus,
      queue: await bus.workQueue('tasks', { ackWaitMs: 5_000, maxDeliver: 1 }),
      results: await bus.keyValue('results'),
      // And a fallback of the user's that throws: the same timer, the same crash.
      fallbacks: fallbacksWith({ flows: [], fallbacks: { boom: () => { throw new Error('a bug in the fallback'); } } }),
      graceMs: 200,
    });
    daemon = new Daemon({ bus, flows: provideFlows({ microtask }), store: new KvSnapshotStore(await bus.keyValue('snapshots')), logger: silentLogger, outRoot });
    await daemon.start();
    client = await connect({ servers: nats.url });
  });

  afterAll(async () => {
    await client?.close();
    await daemon?.stop();
    await bus?.close();
    await nats?.close();
    if (outRoot) await rm(outRoot, { recursive: true, force: true });
  });

  const request = async (subject: string, payload: unknown) => (await client.request(subject, JSON.stringify(payload), { timeout: 10_000 })).json<any>();

  it.each(['__proto__', 'boom'])('taskType %s: the flow ends with the default fallback and the daemon keeps serving', async (taskType) => {
    const started = await request('microtask.flow.start.microtask', { input: { taskType, system: 's', prompt: 'p', timeoutMs: 300 } });
    expect(started).toMatchObject({ ok: true });
    let record: any;
    for (let i = 0; i < 100 && record?.status !== 'failed'; i++) {
      await new Promise((resolve) => setTimeout(resolve, 100));
      record = await request('microtask.flow.get', { flowId: started.flowId });
    }
    expect(record).toMatchObject({ ok: true, status: 'failed', output: { result: { fallback: true, taskType } } });
  });
});
