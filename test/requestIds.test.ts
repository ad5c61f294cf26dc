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
import { loadConfig } from '../src/config.js';
import { Daemon } from '../src/daemon/Daemon.js';
import { provideFlows } from '../src/flows.js';
import { silentLogger } from '../src/log.js';
import { answerSchemas } from '../src/contracts/answers.js';
import { KvSnapshotStore } from '../src/persistence/KvSnapshotStore.js';
import { connectBus, startDaemonService } from '../src/services.js';
import { startNatsServer, type NatsServer } from '../src/testing/natsServer.js';

// Issue 16: a requestId reused with another pattern or another payload answered ok:true with
// the earlier, unrelated flow. Request ids are scoped per pattern, and a reuse with another
// payload is refused (REQUEST_ID_CONFLICT), over NATS (the flows KV bucket) and embedded
// (the state directory's database). Each daemon is stopped and another one started on the
// same store partway, so what is checked is what the claim keeps, not a daemon's memory.

const readExample = async (name: string) => (await import(`../examples/${name}.json`, { with: { type: 'json' } })).default as Record<string, any>;
const summarize = await readExample('microtask');
const feedback = await readExample('feedback-loop');
const spec = await readExample('api-tester');

/** A daemon serving the protocol, asked by a client, restartable on the same store. */
interface Setup {
  ask(subject: string, payload: unknown): Promise<any>;
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

async function natsSetup(): Promise<Setup> {
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
  return {
    ask: async (subject, payload) => (await client.request(subject, JSON.stringify(payload), { timeout: 10_000 })).json<any>(),
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

/** Embedded, as `microtask daemon` runs without NATS_URL: the state directory's database claims the ids. */
async function embeddedSetup(): Promise<Setup> {
  const stateDir = await mkdtemp(join(tmpdir(), 'request-ids-state-'));
  const config = loadConfig({ MICROTASK_STATE_DIR: stateDir });
  const startDaemon = async () => {
    const bus = await connectBus(config, silentLogger, 'daemon');
    const daemon = await startDaemonService(bus, config, silentLogger, { journal: false });
    return {
      bus,
      stop: async () => {
        await daemon.stop();
        await bus.close();
      },
    };
  };
  let running = await startDaemon();
  return {
    ask: async (subject, payload) => (await running.bus.request(subject, JSON.stringify(payload), { timeoutMs: 10_000 })).json<any>(),
    restart: async () => {
      await running.stop();
      running = await startDaemon();
    },
    close: async () => {
      await running.stop();
      await rm(stateDir, { recursive: true, force: true });
    },
  };
}

describe.each([
  ['over NATS', natsSetup],
  ['embedded', embeddedSetup],
])('request ids %s', { timeout: 60_000 }, (_mode, makeSetup) => {
  let setup: Setup;
  afterEach(async () => {
    await setup?.close();
  });

  it('answers the same flow for the same request again, its keys in any order, also after a restart', async () => {
    setup = await makeSetup();
    const first = await setup.ask('microtask.flow.start.microtask', { input: summarize, requestId: 'same-1' });
    expect(first).toMatchObject({ ok: true, flowId: expect.stringMatching(/^microtask-/) });
    const reordered = Object.fromEntries(Object.entries(summarize).reverse());
    expect(await setup.ask('microtask.flow.start.microtask', { requestId: 'same-1', input: reordered })).toEqual(first);
    await setup.restart();
    expect(await setup.ask('microtask.flow.start.microtask', { input: summarize, requestId: 'same-1' })).toEqual(first);
  });

  it('refuses the id reused with another payload (REQUEST_ID_CONFLICT, naming the flow), also after a restart', async () => {
    setup = await makeSetup();
    const first = await setup.ask('microtask.flow.start.microtask', { input: summarize, requestId: 'reuse-1' });
    expect(first.ok).toBe(true);
    const other = { ...summarize, prompt: 'Summarize the text in the data, for a child.' };
    const refused = await setup.ask('microtask.flow.start.microtask', { input: other, requestId: 'reuse-1' });
    expect(refused).toEqual({
      ok: false,
      error: {
        code: 'REQUEST_ID_CONFLICT',
        message: `request id "reuse-1" already started flow ${first.flowId} with another microtask input: send a new request id for a new request`,
      },
    });
    await setup.restart();
    expect((await setup.ask('microtask.flow.start.microtask', { input: other, requestId: 'reuse-1' })).error?.code).toBe('REQUEST_ID_CONFLICT');
    // The refused request started nothing: the first is still the one the id names.
    expect(await setup.ask('microtask.flow.start.microtask', { input: summarize, requestId: 'reuse-1' })).toEqual(first);
  });

  it('scopes request ids per pattern: the same id starts a flow of each pattern', async () => {
    setup = await makeSetup();
    const micro = await setup.ask('microtask.flow.start.microtask', { input: summarize, requestId: 'scoped-1' });
    const loop = await setup.ask('microtask.flow.start.feedback-loop', { input: feedback, requestId: 'scoped-1' });
    expect(micro).toMatchObject({ ok: true, flowId: expect.stringMatching(/^microtask-/) });
    expect(loop).toMatchObject({ ok: true, flowId: expect.stringMatching(/^feedback-loop-/) });
    expect(await setup.ask('microtask.flow.get', { flowId: loop.flowId })).toMatchObject({ ok: true, pattern: 'feedback-loop', requestId: 'scoped-1' });
    expect(await setup.ask('microtask.flow.start.feedback-loop', { input: feedback, requestId: 'scoped-1' })).toEqual(loop);
  });

  it('refuses a tool build whose requestId names another spec', async () => {
    setup = await makeSetup();
    const first = await setup.ask('microtask.toolbuild.request', { ...spec, requestId: 'build-1' });
    expect(first.ok).toBe(true);
    expect(await setup.ask('microtask.toolbuild.request', { ...spec, requestId: 'build-1' })).toEqual(first);
    const refused = await setup.ask('microtask.toolbuild.request', { ...spec, name: 'other-tool', requestId: 'build-1' });
    expect(refused.error?.code).toBe('REQUEST_ID_CONFLICT');
  });

  it('a cancelled flow: flow.get says cancelled, error.code CANCELLED, no output', async () => {
    setup = await makeSetup();
    const { flowId } = await setup.ask('microtask.flow.start.microtask', { input: summarize });
    expect(await setup.ask('microtask.flow.cancel', { flowId })).toEqual({ ok: true, flowId });
    const record = await setup.ask('microtask.flow.get', { flowId });
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
