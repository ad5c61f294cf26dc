import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { jetstream } from '@nats-io/jetstream';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createMicrotaskLogic, MicrotaskRunner } from '../src/actors/microtask.js';
import { MemoryResultsStore } from '../src/actors/ResultsStore.js';
import { ScriptedModel } from '../src/actors/model/ScriptedModel.js';
import { connectNatsBus } from '../src/bus/NatsBus.js';
import { Daemon } from '../src/daemon/Daemon.js';
import { provideFlows } from '../src/flows.js';
import { silentLogger } from '../src/log.js';
import { answerSchemas } from '../src/contracts/answers.js';
import { KvSnapshotStore } from '../src/persistence/KvSnapshotStore.js';
import { createOrchestrator, OrchestratorError } from '../src/orchestrator.js';
import { startNatsServer, type NatsServer } from '../src/testing/natsServer.js';

// Issue 16: a requestId reused with another pattern or another payload answered ok:true with
// the earlier, unrelated flow. Request ids are scoped per pattern, and a reuse with another
// payload is refused (REQUEST_ID_CONFLICT), over NATS (a daemon on the protocol; the flows
// KV bucket claims the ids) and embedded (the library's orchestrator on a state directory;
// its lmdb database claims them). Each is stopped and another started on the same store
// partway, so what is checked is what the claim keeps, not a process's memory.

const readExample = async (name: string) => (await import(`../examples/${name}.json`, { with: { type: 'json' } })).default as Record<string, any>;
const summarize = await readExample('microtask');
const feedback = await readExample('feedback-loop');
const spec = await readExample('api-tester');

/** What the protocol answers: `{ ok: true, ... }`, or `{ ok: false, error: { code, message } }`. */
type Answer = Record<string, any>;

/**
 * Flows started, read and cancelled, each mode in its own calls (NATS: the protocol's
 * subjects; embedded: the orchestrator's), answered in the protocol's shape so the cases
 * below state one expectation for both. Restartable on the same store.
 */
interface Setup {
  start(pattern: string, input: Record<string, unknown>, requestId?: string): Promise<Answer>;
  /** A tool build (NATS: `toolbuild.request`; embedded: a `tool-builder` flow, as the daemon starts it). */
  build(toolSpec: Record<string, unknown>, requestId: string): Promise<Answer>;
  get(flowId: string): Promise<Answer>;
  cancel(flowId: string): Promise<Answer>;
  restart(): Promise<void>;
  close(): Promise<void>;
}

// Slow answers: the flows stay running while the requests are checked (and can be cancelled).
const slowModel = () => new ScriptedModel(() => ({ text: 'a sentence', delayMs: 3_000 }));

let server: NatsServer;
beforeAll(async () => {
  server = await startNatsServer();
});
afterAll(async () => {
  await server?.close();
});

async function natsSetup(): Promise<Setup & { ask(subject: string, payload: unknown): Promise<Answer> }> {
  const outRoot = await mkdtemp(join(tmpdir(), 'request-ids-'));
  const client = await connect({ servers: server.url });
  const startDaemon = async () => {
    const bus = await connectNatsBus({ servers: [server.url] });
    const runner = new MicrotaskRunner({ model: slowModel(), results: new MemoryResultsStore(), answers: answerSchemas });
    const daemon = new Daemon({
      bus,
      flows: provideFlows({ microtask: createMicrotaskLogic(runner) }),
      store: new KvSnapshotStore(await bus.keyValue('snapshots')),
      logger: silentLogger,
      outRoot,
    });
    await daemon.start();
    return async () => {
      await daemon.stop();
      await bus.close();
    };
  };
  let stop = await startDaemon();
  const ask = async (subject: string, payload: unknown): Promise<Answer> => (await client.request(subject, JSON.stringify(payload), { timeout: 10_000 })).json<Answer>();
  return {
    ask,
    start: (pattern, input, requestId) => ask(`microtask.flow.start.${pattern}`, { input, ...(requestId ? { requestId } : {}) }),
    build: (toolSpec, requestId) => ask('microtask.toolbuild.request', { ...toolSpec, requestId }),
    get: (flowId) => ask('microtask.flow.get', { flowId }),
    cancel: (flowId) => ask('microtask.flow.cancel', { flowId }),
    restart: async () => {
      await stop();
      stop = await startDaemon();
    },
    close: async () => {
      await stop();
      // The next setup starts on empty buckets and streams.
      const jsm = await jetstream(client).jetstreamManager();
      for await (const name of jsm.streams.names()) await jsm.streams.delete(name);
      await client.close();
      await rm(outRoot, { recursive: true, force: true });
    },
  };
}

/** An orchestrator's call as the protocol answers it: its result, or its OrchestratorError's code and message. */
async function answered(call: () => Promise<Answer>): Promise<Answer> {
  try {
    return { ok: true, ...(await call()) };
  } catch (e) {
    if (!(e instanceof OrchestratorError)) throw e;
    return { ok: false, error: { code: e.code, message: e.message } };
  }
}

/** Embedded, as the library runs flows in its process: the state directory's database claims the ids. */
async function embeddedSetup(): Promise<Setup> {
  const stateDir = await mkdtemp(join(tmpdir(), 'request-ids-state-'));
  const open = () => createOrchestrator({ stateDir, model: slowModel(), env: {} });
  let orchestrator = await open();
  return {
    start: (pattern, input, requestId) => answered(async () => ({ flowId: await orchestrator.start(pattern, input, requestId ? { requestId } : {}) })),
    build: (toolSpec, requestId) => {
      // The daemon's toolbuild.request: the spec, its requestId aside, is the tool-builder flow's input.
      return answered(async () => ({ flowId: await orchestrator.start('tool-builder', { spec: toolSpec }, { requestId }) }));
    },
    get: (flowId) =>
      answered(async () => {
        const record = await orchestrator.get(flowId);
        if (!record) throw new OrchestratorError('FLOW_NOT_FOUND', `no flow ${flowId}`);
        return record;
      }),
    cancel: (flowId) =>
      answered(async () => {
        await orchestrator.cancel(flowId);
        return { flowId };
      }),
    restart: async () => {
      await orchestrator.close();
      orchestrator = await open();
    },
    close: async () => {
      await orchestrator.close();
      await rm(stateDir, { recursive: true, force: true });
    },
  };
}

describe.each([
  ['over NATS', natsSetup],
  ['embedded', embeddedSetup],
])('request ids %s', { timeout: 60_000 }, (_mode, makeSetup: () => Promise<Setup>) => {
  let setup: Setup;
  afterEach(async () => {
    await setup?.close();
  });

  it('answers the same flow for the same request again, its keys in any order, also after a restart', async () => {
    setup = await makeSetup();
    const first = await setup.start('microtask', summarize, 'same-1');
    expect(first).toMatchObject({ ok: true, flowId: expect.stringMatching(/^microtask-/) });
    const reordered = Object.fromEntries(Object.entries(summarize).reverse());
    expect(await setup.start('microtask', reordered, 'same-1')).toEqual(first);
    await setup.restart();
    expect(await setup.start('microtask', summarize, 'same-1')).toEqual(first);
  });

  it('refuses the id reused with another payload (REQUEST_ID_CONFLICT, naming the flow), also after a restart', async () => {
    setup = await makeSetup();
    const first = await setup.start('microtask', summarize, 'reuse-1');
    expect(first.ok).toBe(true);
    const other = { ...summarize, prompt: 'Summarize the text in the data, for a child.' };
    const refused = await setup.start('microtask', other, 'reuse-1');
    expect(refused).toEqual({
      ok: false,
      error: {
        code: 'REQUEST_ID_CONFLICT',
        message: `request id "reuse-1" already started flow ${first.flowId} with another microtask input: send a new request id for a new request`,
      },
    });
    await setup.restart();
    expect((await setup.start('microtask', other, 'reuse-1')).error?.code).toBe('REQUEST_ID_CONFLICT');
    // The refused request started nothing: the first is still the one the id names.
    expect(await setup.start('microtask', summarize, 'reuse-1')).toEqual(first);
  });

  it('scopes request ids per pattern: the same id starts a flow of each pattern', async () => {
    setup = await makeSetup();
    const micro = await setup.start('microtask', summarize, 'scoped-1');
    const loop = await setup.start('feedback-loop', feedback, 'scoped-1');
    expect(micro).toMatchObject({ ok: true, flowId: expect.stringMatching(/^microtask-/) });
    expect(loop).toMatchObject({ ok: true, flowId: expect.stringMatching(/^feedback-loop-/) });
    expect(await setup.get(loop.flowId)).toMatchObject({ ok: true, pattern: 'feedback-loop', requestId: 'scoped-1' });
    expect(await setup.start('feedback-loop', feedback, 'scoped-1')).toEqual(loop);
  });

  it('refuses a tool build whose requestId names another spec', async () => {
    setup = await makeSetup();
    const first = await setup.build(spec, 'build-1');
    expect(first).toMatchObject({ ok: true, flowId: expect.stringMatching(/^tool-builder-/) });
    expect(await setup.build(spec, 'build-1')).toEqual(first);
    const refused = await setup.build({ ...spec, name: 'other-tool' }, 'build-1');
    expect(refused.error?.code).toBe('REQUEST_ID_CONFLICT');
  });

  it('a cancelled flow: flow.get says cancelled, error.code CANCELLED, no output', async () => {
    setup = await makeSetup();
    const { flowId } = await setup.start('microtask', summarize);
    expect(await setup.cancel(flowId)).toEqual({ ok: true, flowId });
    const record = await setup.get(flowId);
    expect(record).toMatchObject({ ok: true, status: 'cancelled', error: { code: 'CANCELLED' } });
    expect(record).not.toHaveProperty('output');
  });
});

describe('the done message of a cancelled flow over NATS', () => {
  let client: NatsConnection;
  it('has status cancelled, error.code CANCELLED and no output', { timeout: 30_000 }, async () => {
    const setup = await natsSetup();
    client = await connect({ servers: server.url });
    try {
      const { flowId } = await setup.ask('microtask.flow.start.microtask', { input: summarize });
      await setup.ask('microtask.flow.cancel', { flowId });
      const consumer = await jetstream(client).consumers.get('MICROTASK_LOG_flows', { filter_subjects: `microtask.flow.${flowId}.done` });
      const done = (await consumer.next({ expires: 10_000 }))?.json<any>();
      expect(done).toEqual({ flowId, status: 'cancelled', error: { code: 'CANCELLED', message: 'cancelled by request' } });
    } finally {
      await client.close();
      await setup.close();
    }
  });
});
