import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { afterEach, describe, expect, it } from 'vitest';
import { ModelError } from '../src/actors/model/ModelError.js';
import { ScriptedModel } from '../src/actors/model/ScriptedModel.js';
import type { Bus } from '../src/bus/Bus.js';
import { loadConfig, type Config } from '../src/config.js';
import { silentLogger } from '../src/log.js';
import { serviceHealth } from '../src/ops/health.js';
import { Metrics } from '../src/ops/metrics.js';
import { startOpsServer } from '../src/ops/server.js';
import { connectBus } from '../src/composition.js';
import { startDaemonService, startWorkerService } from '../src/services.js';
import { startNatsServer, type NatsServer } from '../src/testing/natsServer.js';

// Issue 15 items 3 and 4: a daemon and a worker tell a platform whether they are alive
// (/healthz) and should get work (/readyz), and how they are doing (/metrics, Prometheus).
// Everything here runs over a real nats-server; the model is scripted.

const cleanups: Array<() => Promise<unknown>> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c().catch(() => undefined);
});

async function natsServer(): Promise<NatsServer> {
  const nats = await startNatsServer();
  cleanups.push(() => nats.close());
  return nats;
}

async function configFor(env: Record<string, string>): Promise<Config> {
  const stateDir = await mkdtemp(join(tmpdir(), 'ops-'));
  cleanups.push(() => rm(stateDir, { recursive: true, force: true }));
  return loadConfig({ MICROTASK_STATE_DIR: stateDir, ...env });
}

/** The ops endpoint of a service on its bus, as `--http-port 0` serves it. */
async function serveOps(bus: Bus, config: Config, metrics = new Metrics()) {
  const health = await serviceHealth(bus, config);
  const server = await startOpsServer({ host: '127.0.0.1', port: 0, health, metrics, logger: silentLogger });
  cleanups.push(async () => {
    await server.close();
    await health.close();
  });
  return { url: server.url, health, metrics };
}

/** `name{labels} value` lines of a scrape, as a map from the series to its value. */
async function scrape(url: string): Promise<Map<string, number>> {
  const response = await fetch(`${url}/metrics`);
  expect(response.status).toBe(200);
  expect(response.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
  const series = new Map<string, number>();
  for (const line of (await response.text()).split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const space = line.lastIndexOf(' ');
    series.set(line.slice(0, space), Number(line.slice(space + 1)));
  }
  return series;
}

const value = (series: Map<string, number>, name: string) => series.get(name) ?? 0;
/** The sum over every series of `name` whose labels include all of `labels` (`pattern="parallel"`). */
const sum = (series: Map<string, number>, name: string, ...labels: string[]) =>
  [...series]
    .filter(([key]) => (key === name || key.startsWith(`${name}{`)) && labels.every((l) => key.includes(l)))
    .reduce((total, [, v]) => total + v, 0);

async function waitUntil<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 20_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const got = await probe().catch(() => undefined);
    if (got !== undefined) return got;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function flowStatus(nc: NatsConnection, flowId: string): Promise<{ status: string; output?: { status?: string } }> {
  return JSON.parse(new TextDecoder().decode((await nc.request('microtask.flow.get', JSON.stringify({ flowId }), { timeout: 5_000 })).data));
}

const readiness = async (url: string) => {
  const response = await fetch(`${url}/readyz`);
  return { status: response.status, body: (await response.json()) as { ready: boolean; checks: Array<{ name: string; ok: boolean; reason?: string }> } };
};

describe('metrics', () => {
  it('a scrape of the daemon and of the worker after a few flows shows what happened: flows, steps, microtasks, model calls, tokens, redeliveries, dead letters, budget stops, queue depth', async () => {
    const nats = await natsServer();
    const config = await configFor({ NATS_URL: nats.url, MICROTASK_MAX_DELIVER: '2' });
    // One answer per prompt: `ok` answers; `flaky` is rate limited once, then answers;
    // `doomed` is never available (its task is dead-lettered after its two deliveries).
    const flakyCalls = { n: 0 };
    const model = new ScriptedModel((request) => {
      if (request.prompt === 'doomed') return new ModelError('unavailable', 'overloaded', { retryAfterMs: 20 });
      if (request.prompt === 'flaky' && flakyCalls.n++ === 0) return new ModelError('rate_limited', 'slow down', { retryAfterMs: 20 });
      return { text: 'a sentence', usage: { inputTokens: 100, outputTokens: 10, cacheReadInputTokens: 40 } };
    });
    const daemonBus = await connectBus(config, silentLogger, 'daemon');
    const workerBus = await connectBus(config, silentLogger, 'worker');
    const daemonOps = new Metrics();
    const workerOps = new Metrics();
    const worker = await startWorkerService(workerBus, config, silentLogger, { model, description: 'scripted' }, { metrics: workerOps });
    const daemon = await startDaemonService(daemonBus, config, silentLogger, { metrics: daemonOps });
    cleanups.push(async () => {
      await daemon.stop(0);
      await worker.stop();
      await Promise.all([daemonBus.close(), workerBus.close()]);
    });
    const daemonHttp = await serveOps(daemonBus, config, daemonOps);
    const workerHttp = await serveOps(workerBus, config, workerOps);
    const before = { daemon: await scrape(daemonHttp.url), worker: await scrape(workerHttp.url) };
    expect(sum(before.daemon, 'microtask_flows_started_total')).toBe(0);
    expect(sum(before.worker, 'microtask_model_call_duration_seconds_count')).toBe(0);

    const nc = await connect({ servers: nats.url });
    cleanups.push(() => nc.close());
    const task = (prompt: string) => ({ taskType: 'summarize', system: 'Summarize.', prompt, timeoutMs: 10_000 });
    // One after the other: the worker's circuit breaker, opened by one flow's failure, would
    // otherwise turn another's call into a "not tried" and the counts would vary from run to run.
    const run = async (pattern: 'microtask' | 'parallel', input: Record<string, unknown>) => {
      const flowId = await daemon.startFlow(pattern, input);
      return waitUntil(`flow ${flowId} to end`, async () => {
        const status = await flowStatus(nc, flowId);
        return status.status === 'running' ? undefined : status;
      });
    };
    await run('microtask', task('ok'));
    await run('microtask', task('ok'));
    // Three calls asked for, one allowed: stopped by its budget.
    const parallel = await run('parallel', { tasks: [task('ok'), task('ok'), task('ok')], concurrency: 1, budget: { maxCalls: 1 } });
    await run('microtask', task('flaky'));
    await run('microtask', task('doomed'));
    expect(parallel.output?.status).toBe('budget_exceeded');

    const d = await scrape(daemonHttp.url);
    expect(value(d, 'microtask_flows_started_total{pattern="microtask"}')).toBe(4);
    expect(value(d, 'microtask_flows_started_total{pattern="parallel"}')).toBe(1);
    expect(sum(d, 'microtask_flows_ended_total', 'pattern="microtask"')).toBe(4);
    expect(value(d, 'microtask_flows_ended_total{pattern="parallel",status="done",outcome="budget_exceeded"}')).toBe(1);
    expect(value(d, 'microtask_budget_stops_total{pattern="parallel"}')).toBe(1);
    expect(sum(d, 'microtask_flows_running')).toBe(0);
    expect(value(d, 'microtask_flow_transitions_total{pattern="microtask"}')).toBeGreaterThanOrEqual(8);
    expect(value(d, 'microtask_flow_saves_total{pattern="microtask"}')).toBeGreaterThanOrEqual(8);
    expect(value(d, 'microtask_flow_saves_total{pattern="parallel"}')).toBeGreaterThan(0);
    // As the flows saw them: four answers (one after a redelivery), one failure after its last delivery.
    expect(value(d, 'microtask_microtasks_total{task_type="summarize",outcome="ok",error_kind=""}')).toBe(4);
    expect(sum(d, 'microtask_microtasks_total', 'error_kind="unavailable"')).toBe(1);
    expect(value(d, 'microtask_queue_depth{queue="tasks",state="waiting"}')).toBe(0);
    expect(d.has('microtask_queue_depth{queue="tasks",state="in_flight"}')).toBe(true);
    // The daemon makes no model call with NATS: the workers do, and count them.
    expect(sum(d, 'microtask_model_call_duration_seconds_count')).toBe(0);

    const w = await scrape(workerHttp.url);
    expect(value(w, 'microtask_model_call_duration_seconds_count{model="claude-haiku-5-5",outcome="ok"}')).toBe(4);
    expect(value(w, 'microtask_model_call_duration_seconds_count{model="claude-haiku-5-5",outcome="rate_limited"}')).toBe(1);
    expect(value(w, 'microtask_model_call_duration_seconds_count{model="claude-haiku-5-5",outcome="unavailable"}')).toBe(2);
    expect(value(w, 'microtask_model_tokens_total{model="claude-haiku-5-5",kind="input"}')).toBe(400);
    expect(value(w, 'microtask_model_tokens_total{model="claude-haiku-5-5",kind="output"}')).toBe(40);
    expect(value(w, 'microtask_model_tokens_total{model="claude-haiku-5-5",kind="cache_read"}')).toBe(160);
    expect(value(w, 'microtask_task_deliveries_total{queue="tasks"}')).toBe(7);
    expect(value(w, 'microtask_task_redeliveries_total{queue="tasks"}')).toBe(2);
    expect(value(w, 'microtask_task_retries_total{queue="tasks"}')).toBe(2);
    expect(value(w, 'microtask_dead_letters_total{queue="tasks"}')).toBe(1);
    expect(value(w, 'microtask_tasks_acked_total{queue="tasks"}')).toBe(4);
    // Process metrics come along (prom-client's defaults).
    expect(w.has('process_resident_memory_bytes')).toBe(true);
  }, 60_000);
});

describe('health', () => {
  it('/healthz answers while alive; /readyz is 200 when NATS answers and the results bucket takes writes, 503 while NATS is down, 200 again when it is back', async () => {
    const nats = await natsServer();
    const config = await configFor({ NATS_URL: nats.url });
    const bus = await connectBus(config, silentLogger, 'worker');
    cleanups.push(() => bus.close());
    const { url } = await serveOps(bus, config);
    expect(await (await fetch(`${url}/healthz`)).text()).toBe('ok\n');
    const up = await readiness(url);
    expect(up).toEqual({ status: 200, body: { ready: true, checks: [{ name: 'draining', ok: true }, { name: 'nats', ok: true }, { name: 'store', ok: true }] } });

    await nats.stop();
    const down = await waitUntil('/readyz to turn 503', async () => {
      const r = await readiness(url);
      return r.status === 503 ? r : undefined;
    });
    expect(down.body.ready).toBe(false);
    expect(down.body.checks.find((c) => c.name === 'nats')).toMatchObject({ ok: false, reason: expect.stringMatching(/NATS|connection|no answer/) });
    // Alive all along: a platform must not restart a process for its server's outage.
    expect((await fetch(`${url}/healthz`)).status).toBe(200);

    await nats.start();
    await waitUntil('/readyz to turn 200 again', async () => ((await readiness(url)).status === 200 ? true : undefined), 20_000);
  }, 60_000);

  it('/readyz is 503 while the process drains', async () => {
    const nats = await natsServer();
    const config = await configFor({ NATS_URL: nats.url });
    const bus = await connectBus(config, silentLogger, 'daemon');
    cleanups.push(() => bus.close());
    const { url, health } = await serveOps(bus, config);
    expect((await readiness(url)).status).toBe(200);
    health.drain();
    const drained = await readiness(url);
    expect(drained.status).toBe(503);
    expect(drained.body.checks[0]).toEqual({ name: 'draining', ok: false, reason: 'the process is stopping' });
  }, 30_000);

  it('answers 404 elsewhere and 405 to anything but GET', async () => {
    const nats = await natsServer();
    const config = await configFor({ NATS_URL: nats.url });
    const bus = await connectBus(config, silentLogger, 'daemon');
    cleanups.push(() => bus.close());
    const { url } = await serveOps(bus, config);
    expect((await fetch(`${url}/api/flows`)).status).toBe(404);
    expect((await fetch(`${url}/readyz`, { method: 'POST' })).status).toBe(405);
  });
});
