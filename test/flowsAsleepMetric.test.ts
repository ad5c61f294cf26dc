import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { loadConfig } from '../src/config.js';
import { silentLogger } from '../src/log.js';
import { serviceHealth } from '../src/ops/health.js';
import { Metrics } from '../src/ops/metrics.js';
import { startOpsServer } from '../src/ops/server.js';
import { connectBus } from '../src/composition.js';
import { startDaemonService, startWorkerService } from '../src/services.js';
import { startNatsServer } from '../src/testing/natsServer.js';

// An operator sees how many flows a daemon holds asleep (src/flowSleeping.ts): flows that
// only wait for a person, kept as their records and restored when the answer arrives.
// A daemon on its own nats-server with a worker (the offline model), scraped over HTTP.

const { review: _review, ...reentrant } = JSON.parse(await readFile(new URL('../examples/reentrant.json', import.meta.url), 'utf8')) as Record<string, unknown>;

const cleanups: Array<() => Promise<unknown>> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c().catch(() => undefined);
});

/** The value of an unlabelled series in a scrape; undefined when the scrape has no such line. */
async function scraped(url: string, name: string): Promise<number | undefined> {
  const response = await fetch(`${url}/metrics`);
  expect(response.status).toBe(200);
  const line = (await response.text()).split('\n').find((l) => l.startsWith(`${name} `));
  return line === undefined ? undefined : Number(line.slice(name.length + 1));
}

async function until<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 20_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const got = await probe();
    if (got !== undefined) return got;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe('microtask_flows_asleep', () => {
  it('a daemon with a flow that waits for a person shows 1 once it sleeps, 0 once it is woken by the answer and finished', async () => {
    const stateDir = await mkdtemp(join(tmpdir(), 'asleep-'));
    cleanups.push(() => rm(stateDir, { recursive: true, force: true }));
    const nats = await startNatsServer();
    cleanups.push(() => nats.close());
    const config = loadConfig({ NATS_URL: nats.url, MICROTASK_STATE_DIR: stateDir });
    const bus = await connectBus(config, silentLogger, 'daemon');
    const metrics = new Metrics({ processMetrics: false });
    const daemon = await startDaemonService(bus, config, silentLogger, { metrics });
    const worker = await startWorkerService(bus, config, silentLogger);
    cleanups.push(async () => {
      await worker.stop();
      await daemon.stop(0);
      await bus.close();
    });
    const health = await serviceHealth(bus, config);
    const server = await startOpsServer({ host: '127.0.0.1', port: 0, health, metrics, logger: silentLogger });
    cleanups.push(async () => {
      await server.close();
      await health.close();
    });

    expect(await scraped(server.url, 'microtask_flows_asleep')).toBe(0);
    const flowId = await daemon.startFlow('reentrant', { ...reentrant, personReview: {} });
    // Its wait saved, nothing else to do: it sleeps (the daemon keeps no actor for it).
    await until('the flow asleep', async () => ((await scraped(server.url, 'microtask_flows_asleep')) === 1 ? true : undefined));
    expect((await daemon.parts.store.load(flowId))?.record).toMatchObject({ status: 'running', state: 'awaitingReview' });

    const sent = (await bus.request('microtask.flow.send', JSON.stringify({ flowId, eventId: 'approve-1', type: 'review', data: { approved: true } }), { timeoutMs: 10_000 })).json<{ ok: boolean }>();
    expect(sent.ok).toBe(true);
    await until('the flow done', async () => ((await daemon.parts.store.load(flowId))?.record.status === 'done' ? true : undefined));
    expect(await scraped(server.url, 'microtask_flows_asleep')).toBe(0);
  }, 30_000);

  it('a daemon that resumed a waiting flow straight to sleep counts it among the flows it runs (microtask_flows_running), once, also after it wakes', async () => {
    const stateDir = await mkdtemp(join(tmpdir(), 'asleep-restart-'));
    cleanups.push(() => rm(stateDir, { recursive: true, force: true }));
    const nats = await startNatsServer();
    cleanups.push(() => nats.close());
    // One daemon id across the restart: the new daemon reclaims its own leases at once.
    const config = loadConfig({ NATS_URL: nats.url, MICROTASK_STATE_DIR: stateDir, MICROTASK_DAEMON_ID: 'asleep-restart' });
    const serve = async () => {
      const bus = await connectBus(config, silentLogger, 'daemon');
      const metrics = new Metrics({ processMetrics: false });
      const daemon = await startDaemonService(bus, config, silentLogger, { metrics });
      const worker = await startWorkerService(bus, config, silentLogger);
      const health = await serviceHealth(bus, config);
      const server = await startOpsServer({ host: '127.0.0.1', port: 0, health, metrics, logger: silentLogger });
      const stop = async () => {
        await server.close();
        await health.close();
        await worker.stop();
        await daemon.stop(0);
        await bus.close();
      };
      cleanups.push(stop);
      return { bus, daemon, url: server.url, stop };
    };
    const running = async (url: string) => (await fetch(`${url}/metrics`).then((r) => r.text())).split('\n').find((l) => l.startsWith('microtask_flows_running{pattern="reentrant"} '))?.split(' ')[1];

    const first = await serve();
    const flowId = await first.daemon.startFlow('reentrant', { ...reentrant, personReview: {} });
    await until('the flow asleep', async () => ((await scraped(first.url, 'microtask_flows_asleep')) === 1 ? true : undefined));
    expect(await running(first.url)).toBe('1');
    await first.stop();

    const second = await serve();
    // Resumed asleep: its record alone, no 'resumed' entry in the journal until it wakes.
    expect(await scraped(second.url, 'microtask_flows_asleep')).toBe(1);
    expect(await running(second.url)).toBe('1');
    // A refused answer wakes it and it sleeps again: still one flow.
    const refused = (await second.bus.request('microtask.flow.send', JSON.stringify({ flowId, eventId: 'wrong-1', type: 'score', data: { score: 1 } }), { timeoutMs: 10_000 })).json<{ ok: boolean }>();
    expect(refused.ok).toBe(false);
    await until('the flow asleep again', async () => ((await scraped(second.url, 'microtask_flows_asleep')) === 1 ? true : undefined));
    expect(await running(second.url)).toBe('1');
    const sent = (await second.bus.request('microtask.flow.send', JSON.stringify({ flowId, eventId: 'approve-1', type: 'review', data: { approved: true } }), { timeoutMs: 10_000 })).json<{ ok: boolean }>();
    expect(sent.ok).toBe(true);
    await until('the flow done', async () => ((await second.daemon.parts.store.load(flowId))?.record.status === 'done' ? true : undefined));
    expect(await running(second.url)).toBeUndefined();
  }, 45_000);
});
