import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { jetstreamManager, RetentionPolicy, StorageType, type JetStreamManager, type StreamInfo } from '@nats-io/jetstream';
import { Kvm } from '@nats-io/kv';
import { connect, nanos, type NatsConnection } from '@nats-io/transport-node';
import { afterEach, describe, expect, it } from 'vitest';
import { ScriptedModel } from '../src/actors/model/ScriptedModel.js';
import { loadConfig, type Config } from '../src/config.js';
import { silentLogger } from '../src/log.js';
import { connectBus } from '../src/composition.js';
import { startDaemonService, startWorkerService } from '../src/services.js';
import { startNatsServer, type NatsServer } from '../src/testing/natsServer.js';

// Issue 15 item 1: with NATS, microtask results and request ids were kept forever (as were
// the task queue's leftovers and the dead letters). Every stream and bucket the daemon and
// a worker create is bounded by MICROTASK_RETENTION_HOURS, but the snapshots (a running
// flow's must not expire), and one made by an earlier version is brought to the limits.

const HOUR_NS = nanos(3_600_000);
const cleanups: Array<() => Promise<unknown>> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c().catch(() => undefined);
});

async function withServer(): Promise<{ nats: NatsServer; nc: NatsConnection; jsm: JetStreamManager }> {
  const nats = await startNatsServer();
  cleanups.push(() => nats.close());
  const nc = await connect({ servers: nats.url });
  cleanups.push(() => nc.close());
  return { nats, nc, jsm: await jetstreamManager(nc) };
}

async function configFor(nats: NatsServer, env: Record<string, string> = {}): Promise<Config> {
  const stateDir = await mkdtemp(join(tmpdir(), 'storage-limits-'));
  cleanups.push(() => rm(stateDir, { recursive: true, force: true }));
  return loadConfig({ NATS_URL: nats.url, MICROTASK_STATE_DIR: stateDir, MICROTASK_RETENTION_HOURS: '3', ...env });
}

/** A daemon and a worker as `microtask daemon` and `microtask worker` start them, and one flow run through them. */
async function runOneFlow(config: Config, nc: NatsConnection) {
  const daemonBus = await connectBus(config, silentLogger, 'daemon');
  const workerBus = await connectBus(config, silentLogger, 'worker');
  const worker = await startWorkerService(workerBus, config, silentLogger, { model: new ScriptedModel(() => 'a sentence'), description: 'scripted' });
  const daemon = await startDaemonService(daemonBus, config, silentLogger);
  cleanups.push(async () => {
    await daemon.stop(0);
    await worker.stop();
    await Promise.all([daemonBus.close(), workerBus.close()]);
  });
  const input = { taskType: 'summarize', system: 'Summarize.', prompt: 'Summarize this.', timeoutMs: 10_000 };
  const flowId = await daemon.startFlow('microtask', input, 'request-1');
  const deadline = Date.now() + 20_000;
  for (;;) {
    const answer = JSON.parse(new TextDecoder().decode((await nc.request('microtask.flow.get', JSON.stringify({ flowId }), { timeout: 5_000 })).data));
    if (answer.status === 'done') break;
    if (Date.now() > deadline) throw new Error(`flow ${flowId} did not finish: ${JSON.stringify(answer)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  return flowId;
}

async function streams(jsm: JetStreamManager): Promise<Map<string, StreamInfo>> {
  const all = new Map<string, StreamInfo>();
  for await (const info of jsm.streams.list()) all.set(info.config.name, info);
  return all;
}

describe('bounded storage with NATS', () => {
  it('every stream and bucket a daemon and a worker create expires with the retention, but the snapshots', async () => {
    const { nats, nc, jsm } = await withServer();
    await runOneFlow(await configFor(nats), nc);
    const all = await streams(jsm);
    // Found on the server, not listed by hand: a stream added later without a limit fails here.
    expect([...all.keys()].sort()).toEqual([
      'KV_MICROTASK_flows',
      'KV_MICROTASK_leases',
      'KV_MICROTASK_results',
      'KV_MICROTASK_snapshots',
      'MICROTASK_DLQ_microtask_tasks_dead',
      'MICROTASK_LOG_flows',
      'MICROTASK_LOG_history',
      'MICROTASK_LOG_inbox',
      'MICROTASK_WQ_tasks',
    ]);
    for (const [name, info] of all) {
      expect(info.config.num_replicas, name).toBe(1);
      // Kept while a flow runs, however long it waits: its snapshot, and which daemon holds it.
      if (name === 'KV_MICROTASK_snapshots' || name === 'KV_MICROTASK_leases') expect(info.config.max_age, name).toBe(0);
      else expect(info.config.max_age, name).toBe(3 * HOUR_NS);
      // Only the last value of a key is ever read.
      if (name.startsWith('KV_')) expect(info.config.max_msgs_per_subject, name).toBe(1);
    }
    // The flow's result and its request id are there, to expire with the bucket's max age.
    expect((await jsm.streams.info('KV_MICROTASK_results')).state.messages).toBeGreaterThan(0);
    expect((await jsm.streams.info('KV_MICROTASK_flows')).state.messages).toBe(1);
  }, 60_000);

  it('brings the streams and buckets an earlier version made (kept forever) to the limits, keeping what they hold', async () => {
    const { nats, nc, jsm } = await withServer();
    // As the earlier version made them: no max age anywhere.
    const kvm = new Kvm(nc);
    const results = await kvm.create('MICROTASK_results', { history: 1 });
    await results.put('earlier', 'a result stored before the upgrade');
    const flows = await kvm.create('MICROTASK_flows', { history: 1 });
    await flows.put('earlier', 'flow-1');
    await jsm.streams.add({ name: 'MICROTASK_WQ_tasks', subjects: ['microtask.wq.tasks'], retention: RetentionPolicy.Workqueue, storage: StorageType.File });
    await jsm.streams.add({ name: 'MICROTASK_DLQ_microtask_tasks_dead', subjects: ['microtask.tasks.dead'], storage: StorageType.File });
    await jsm.streams.add({ name: 'MICROTASK_LOG_flows', subjects: ['microtask.flow.*.events', 'microtask.flow.*.done'], storage: StorageType.File });
    await jsm.streams.add({ name: 'MICROTASK_LOG_history', subjects: ['microtask.flow.*.history'], storage: StorageType.File });
    for (const info of (await streams(jsm)).values()) expect(info.config.max_age, info.config.name).toBe(0);

    await runOneFlow(await configFor(nats, { MICROTASK_RETENTION_HOURS: '5' }), nc);

    const all = await streams(jsm);
    for (const name of ['KV_MICROTASK_results', 'KV_MICROTASK_flows', 'MICROTASK_WQ_tasks', 'MICROTASK_DLQ_microtask_tasks_dead', 'MICROTASK_LOG_flows', 'MICROTASK_LOG_history']) {
      expect(all.get(name)?.config.max_age, name).toBe(5 * HOUR_NS);
    }
    expect(all.get('KV_MICROTASK_snapshots')?.config.max_age).toBe(0);
    // An update, not a new stream: what was stored stays.
    expect((await (await kvm.open('MICROTASK_results')).get('earlier'))?.string()).toBe('a result stored before the upgrade');
    expect((await (await kvm.open('MICROTASK_flows')).get('earlier'))?.string()).toBe('flow-1');
  }, 60_000);

  it('a later start with another retention moves the limits with it', async () => {
    const { nats, nc, jsm } = await withServer();
    await runOneFlow(await configFor(nats, { MICROTASK_RETENTION_HOURS: '3' }), nc);
    for (const c of cleanups.splice(2).reverse()) await c();
    await runOneFlow(await configFor(nats, { MICROTASK_RETENTION_HOURS: '24' }), nc);
    const all = await streams(jsm);
    expect(all.get('KV_MICROTASK_results')?.config.max_age).toBe(24 * HOUR_NS);
    expect(all.get('MICROTASK_WQ_tasks')?.config.max_age).toBe(24 * HOUR_NS);
    expect(all.get('MICROTASK_LOG_history')?.config.max_age).toBe(24 * HOUR_NS);
  }, 60_000);

  it('MICROTASK_STREAM_REPLICAS reaches the server: more than one on a single server is refused at start, saying why', async () => {
    const { nats } = await withServer();
    const config = await configFor(nats, { MICROTASK_STREAM_REPLICAS: '3' });
    expect(config.MICROTASK_STREAM_REPLICAS).toBe(3);
    const bus = await connectBus(config, silentLogger, 'worker');
    cleanups.push(() => bus.close());
    await expect(startWorkerService(bus, config, silentLogger, { model: new ScriptedModel(() => 'x'), description: 'scripted' })).rejects.toThrow(/replicas/i);
  }, 30_000);

  it('MICROTASK_STREAM_REPLICAS is checked like any setting', () => {
    expect(() => loadConfig({ MICROTASK_STREAM_REPLICAS: '6' })).toThrow(/MICROTASK_STREAM_REPLICAS="6": expected a whole number of replicas between 1 and 5/);
    expect(loadConfig({}).MICROTASK_STREAM_REPLICAS).toBe(1);
  });
});
