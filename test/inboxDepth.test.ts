import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { assign, setup } from 'xstate';
import { z } from 'zod';
import { connectNatsBus, type NatsBus } from '../src/bus/NatsBus.js';
import { Daemon } from '../src/daemon/Daemon.js';
import { defineFlow } from '../src/flowCatalog.js';
import { provideFlows } from '../src/flows.js';
import { silentLogger } from '../src/log.js';
import { KvSnapshotStore } from '../src/persistence/KvSnapshotStore.js';
import { startNatsServer, type NatsServer } from '../src/testing/natsServer.js';
import { scripted } from './support/flows.js';

// Any NATS client may publish to a flow's inbox (`<prefix>.flow.<id>.inbox`), where flow.send's
// limits are not checked. An event nested 20,000 deep, for a user's wait that takes any data,
// overflowed the stack while the host applied it (XState copies the context recursively): the
// flow then refused every later answer ("waits for no event now") and kept waiting, forever.

const takesAnything = defineFlow({
  name: 'takes-anything',
  version: 1,
  input: z.object({ key: z.string().optional() }),
  machine: () =>
    setup({ types: {} as { context: { got: unknown } } }).createMachine({
      id: 'takes-anything',
      context: { got: null },
      initial: 'waiting',
      states: {
        waiting: {
          meta: { wait: { for: 'any data', events: { give: z.object({ payload: z.unknown() }) } } },
          on: { give: { target: 'done', actions: assign({ got: ({ event }) => (event as { data?: { payload?: unknown } }).data?.payload }) } },
        },
        done: { type: 'final' },
      },
      output: ({ context }) => ({ status: 'done', result: context.got }),
    }),
});

let nats: NatsServer;
let bus: NatsBus;
let daemon: Daemon;
let client: NatsConnection;
let outRoot: string;

beforeAll(async () => {
  nats = await startNatsServer();
  outRoot = await mkdtemp(join(tmpdir(), 'inbox-depth-'));
  bus = await connectNatsBus({ servers: [nats.url] });
  const { microtask } = scripted(() => ({ text: 'unused' }));
  daemon = new Daemon({ bus, flows: provideFlows({ microtask }, [takesAnything]), store: new KvSnapshotStore(await bus.keyValue('snapshots')), logger: silentLogger, outRoot });
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

describe("an event published straight to a flow's inbox", () => {
  it('nested deeper than the protocol allows is skipped; the answer after it is applied', async () => {
    const { flowId } = await request('microtask.flow.start.takes-anything', { input: {} });
    expect(flowId).toBeDefined();
    let deep = '1';
    for (let i = 0; i < 20_000; i++) deep = `[${deep}]`;
    client.publish(`microtask.flow.${flowId}.inbox`, `{"eventId":"deep","type":"give","data":{"payload":${deep}}}`);
    client.publish(`microtask.flow.${flowId}.inbox`, JSON.stringify({ eventId: 'fine', type: 'give', data: { payload: { ok: 1 } } }));
    let record: any;
    for (let i = 0; i < 100 && record?.status !== 'done'; i++) {
      await new Promise((resolve) => setTimeout(resolve, 100));
      record = await request('microtask.flow.get', { flowId });
    }
    expect(record).toMatchObject({ status: 'done', output: { result: { ok: 1 } } });
  });
});
