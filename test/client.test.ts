import { mkdtemp, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connectNatsBus } from '../src/bus/NatsBus.js';
import { ClientError, MicrotaskClient } from '../src/client.js';
import { loadConfig } from '../src/config.js';
import { silentLogger } from '../src/log.js';
import { startDaemonService, startWorkerService } from '../src/services.js';
import { reply, startFakeAnthropic, type FakeAnthropic } from '../src/testing/fakeAnthropic.js';
import { startNatsServer, type NatsServer } from '../src/testing/natsServer.js';

// The typed client a program uses to drive flows over NATS (and the CLI through it),
// against a real nats-server, daemon and worker.
let nats: NatsServer;
let model: FakeAnthropic;
const stops: Array<() => Promise<void>> = [];
let url: string;

beforeAll(async () => {
  nats = await startNatsServer();
  url = nats.url;
  model = await startFakeAnthropic({ replies: () => reply.text('A release note for users.') });
  const config = loadConfig({ NATS_URL: url, ANTHROPIC_API_KEY: 'sk-test', ANTHROPIC_BASE_URL: model.url, MICROTASK_STATE_DIR: await mkdtemp(join(tmpdir(), 'client-')) });
  const bus = await connectNatsBus({ servers: [url] });
  const daemon = await startDaemonService(bus, config, silentLogger, { journal: false });
  const workerBus = await connectNatsBus({ servers: [url] });
  const worker = await startWorkerService(workerBus, config, silentLogger);
  stops.push(async () => {
    await daemon.stop();
    await worker.stop();
    await bus.close();
    await workerBus.close();
  });
});
afterAll(async () => {
  for (const stop of stops) await stop();
  await model?.close();
  await nats?.close();
});

const { review: _review, ...reentrant } = JSON.parse(await readFile(new URL('../examples/reentrant.json', import.meta.url), 'utf8'));

describe('MicrotaskClient', () => {
  it('starts a flow, reads its record and events, answers what it waits for, and gets its end', async () => {
    const client = await MicrotaskClient.connect({ servers: [url] });
    try {
      const flowId = await client.start('reentrant', { ...reentrant, personReview: {} }, { requestId: 'client-1' });
      expect(await client.start('reentrant', { ...reentrant, personReview: {} }, { requestId: 'client-1' })).toBe(flowId);
      let record = await client.get(flowId);
      for (let i = 0; i < 100 && !record.waiting; i++) {
        await new Promise((r) => setTimeout(r, 50));
        record = await client.get(flowId);
      }
      expect(record).toMatchObject({ ok: true, flowId, status: 'running', state: 'awaitingReview', waiting: [{ events: ['review'] }] });
      const seen: number[] = [];
      const events = await client.events(flowId, (e) => seen.push(e.seq));
      expect(await client.send(flowId, { eventId: 'yes-1', type: 'review', data: { approved: true } })).toEqual({ eventId: 'yes-1', duplicate: false });
      const done = await client.done(flowId);
      expect(done).toMatchObject({ flowId, status: 'done', output: { approved: true } });
      await events.unsubscribe();
      expect(seen.slice(0, 3)).toEqual([1, 2, 3]);
    } finally {
      await client.close();
    }
  });

  it('turns refusals into ClientErrors with the daemon\'s code and one line', async () => {
    const client = await MicrotaskClient.connect({ servers: [url] });
    try {
      const refused = (p: Promise<unknown>) => p.then(() => undefined, (e: unknown) => e as ClientError);
      const unknown = await refused(client.start('nope', {}));
      expect(unknown).toBeInstanceOf(ClientError);
      expect(unknown!.code).toBe('UNKNOWN_PATTERN');
      expect((await refused(client.get('reentrant-nosuchflow-00000000')))!.code).toBe('FLOW_NOT_FOUND');
      expect((await refused(client.start('reentrant', { task: 1 })))!.message).toContain('task');
    } finally {
      await client.close();
    }
  });

  it('says NO_DAEMON when nobody serves the prefix, and BAD_REPLY when something else answers', async () => {
    const client = await MicrotaskClient.connect({ servers: [url], subjectPrefix: 'nobody', timeoutMs: 2_000 });
    const impostor = await connectNatsBus({ servers: [url] });
    try {
      const noDaemon = await client.get('x').then(() => undefined, (e: unknown) => e as ClientError);
      expect(noDaemon?.code).toBe('NO_DAEMON');
      await impostor.subscribe('nobody.flow.get', (m) => impostor.respond(m, JSON.stringify({ ok: true, hello: 'world' })));
      const bad = await client.get('x').then(() => undefined, (e: unknown) => e as ClientError);
      expect(bad?.code).toBe('BAD_REPLY');
      expect(bad?.message).toContain('flowId');
    } finally {
      await impostor.close();
      await client.close();
    }
  });
});
