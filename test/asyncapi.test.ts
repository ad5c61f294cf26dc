import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import asyncapiSpecs from '@asyncapi/specs';
import { Ajv } from 'ajv';
import { describe, expect, it } from 'vitest';
import { subjects } from '../src/bus/subjects.js';
import { loadConfig } from '../src/config.js';
import { asyncApiDocument } from '../src/daemon/asyncapi.js';
import { silentLogger } from '../src/log.js';
import { connectBus } from '../src/composition.js';
import { startDaemonService, startWorkerService } from '../src/services.js';
import { startNatsServer } from '../src/testing/natsServer.js';

// docs/asyncapi.json is generated from src/daemon/protocol.ts (`npm run asyncapi`). These
// check that the committed file is the one the schemas give, that it is a valid AsyncAPI
// 3.0.0 document, and that its schemas accept what a real daemon (on a nats-server) sends.

const root = new URL('..', import.meta.url);
const committed = JSON.parse(await readFile(new URL('docs/asyncapi.json', root), 'utf8'));
const { version } = JSON.parse(await readFile(new URL('package.json', root), 'utf8')) as { version: string };

/** Every `$ref` in the document, with the path where it appears. */
function refs(value: unknown, path = '#'): Array<{ at: string; ref: string }> {
  if (Array.isArray(value)) return value.flatMap((item, i) => refs(item, `${path}/${i}`));
  if (value === null || typeof value !== 'object') return [];
  return Object.entries(value).flatMap(([key, item]) =>
    key === '$ref' && typeof item === 'string' ? [{ at: path, ref: item }] : refs(item, `${path}/${key}`),
  );
}
const resolve = (document: unknown, ref: string) =>
  ref
    .slice(2)
    .split('/')
    .reduce<unknown>((node, part) => (node as Record<string, unknown> | undefined)?.[part.replaceAll('~1', '/').replaceAll('~0', '~')], document);

describe('docs/asyncapi.json', () => {
  it('is what the protocol schemas generate (else: npm run asyncapi)', () => {
    expect(committed, 'docs/asyncapi.json is stale: run `npm run asyncapi` and commit it').toEqual(asyncApiDocument(version));
  });

  it('is a valid AsyncAPI 3.0.0 document whose every $ref resolves', () => {
    // The spec bundles draft 7's meta-schema: ajv's own copy stays out.
    const ajv = new Ajv({ allErrors: true, strict: false, validateFormats: false, meta: false, validateSchema: false });
    const validate = ajv.compile(asyncapiSpecs.schemas['3.0.0']);
    const valid = validate(committed);
    expect(validate.errors ?? [], JSON.stringify(validate.errors?.slice(0, 5), null, 1)).toEqual([]);
    expect(valid).toBe(true);
    const dangling = refs(committed).filter(({ ref }) => resolve(committed, ref) === undefined);
    expect(dangling).toEqual([]);
  });

  it("accepts what a daemon sends: a tool build's answer, events, done and record, and an error answer", { timeout: 120_000 }, async () => {
    // The document's schemas, each under its own name, refs between them resolved by ajv.
    const ajv = new Ajv({ allErrors: true, strict: false, validateFormats: false });
    ajv.addSchema({ $id: 'asyncapi', components: committed.components });
    const check = (id: string, payload: unknown) => {
      const validate = ajv.getSchema(`asyncapi#/components/schemas/${id}`)!;
      expect(validate(payload), `${id}: ${JSON.stringify(validate.errors)} for ${JSON.stringify(payload).slice(0, 500)}`).toBe(true);
    };

    // A daemon and a worker (the tool build's microtasks and checks run there) on a nats-server of the test's own.
    await using nats = await startNatsServer();
    const stateDir = await mkdtemp(join(tmpdir(), 'asyncapi-'));
    const config = loadConfig({ NATS_URL: nats.url, MICROTASK_STATE_DIR: stateDir });
    const bus = await connectBus(config, silentLogger, 'daemon');
    const workerBus = await connectBus(config, silentLogger, 'worker');
    const daemon = await startDaemonService(bus, config, silentLogger);
    const worker = await startWorkerService(workerBus, config, silentLogger);
    let workerStopped: Promise<void> | undefined;
    const stopWorker = () => (workerStopped ??= worker.stop());
    try {
      const ask = async (subject: string, payload: unknown) => (await bus.request(subject, JSON.stringify(payload), { timeoutMs: 10_000 })).json<any>();
      const spec = JSON.parse(await readFile(new URL('examples/api-tester.json', root), 'utf8'));
      const started = await ask('microtask.toolbuild.request', { ...spec, requestId: 'asyncapi-1' });
      check('FlowStarted', started);
      let record = await ask('microtask.flow.get', { flowId: started.flowId });
      check('FlowGetAnswer', record);
      while (record.status === 'running') {
        await new Promise((r) => setTimeout(r, 100));
        record = await ask('microtask.flow.get', { flowId: started.flowId });
      }
      check('FlowGetAnswer', record);
      expect(record.status).toBe('done');

      const names = subjects();
      const log = await bus.eventLog(names.flowLog, { subjects: names.flowLogSubjects });
      const events = (await log.read(names.flowEvents(started.flowId))).map((m) => m.json());
      const [done] = (await log.read(names.flowDone(started.flowId))).map((m) => m.json());
      expect(events.length).toBeGreaterThan(0);
      for (const event of events) check('FlowEvent', event);
      check('FlowDone', done);
      // docs/protocol.md says every pattern's root machine is flat today: `state` is a state's name.
      expect(events.map((e: any) => typeof e.state)).toEqual(events.map(() => 'string'));

      check('ErrorAnswer', await ask('microtask.toolbuild.request', { ...spec, name: 'other', requestId: 'asyncapi-1' }));
      check('ErrorAnswer', await ask('microtask.flow.get', { flowId: 'nope' }));
      // No worker takes its microtask: the flow is still running when it is cancelled.
      await stopWorker();
      const cancelled = await ask('microtask.flow.start.microtask', { input: JSON.parse(await readFile(new URL('examples/microtask.json', root), 'utf8')) });
      check('FlowStarted', await ask('microtask.flow.cancel', { flowId: cancelled.flowId }));
      const cancelledRecord = await ask('microtask.flow.get', { flowId: cancelled.flowId });
      check('FlowGetAnswer', cancelledRecord);
      expect(cancelledRecord.status).toBe('cancelled');
    } finally {
      await daemon.stop();
      await stopWorker();
      await Promise.all([bus.close(), workerBus.close()]);
      await rm(stateDir, { recursive: true, force: true });
    }
  });
});
