/**
 * Microtasks per second through the whole bus path: a NATS client requests flows of the
 * `microtask` pattern from the daemon, the daemon enqueues each microtask on the
 * JetStream work queue, one `microtask worker` process runs it with an instant model
 * (the offline cassette), stores the result in KV, and the daemon publishes the flow's
 * events and done message. Measured from the request to the done message.
 *
 *   npx tsx bench/busThroughput.ts [flows=2000] [inFlight=64]
 */
import { spawn } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { connect } from '@nats-io/transport-node';
import { connectNatsBus } from '../src/bus/NatsBus.js';
import { loadConfig } from '../src/config.js';
import { silentLogger } from '../src/log.js';
import { startDaemonService } from '../src/services.js';
import { startNatsServer } from '../src/testing/natsServer.js';

const total = Number(process.argv[2] ?? 2000);
const inFlight = Number(process.argv[3] ?? 64);
const nats = await startNatsServer();
const env = { NATS_URL: nats.url, MICROTASK_LOG_LEVEL: 'silent', MICROTASK_WORKER_CONCURRENCY: String(inFlight) };
const config = loadConfig(env);
const bus = await connectNatsBus({ servers: [nats.url] });
const daemon = await startDaemonService(bus, config, silentLogger);
const worker = spawn(process.execPath, [new URL('../dist/cli.js', import.meta.url).pathname, 'worker'], {
  env: { PATH: process.env.PATH ?? '', ...env },
  stdio: 'inherit',
});

const client = await connect({ servers: nats.url });
const input = JSON.parse(await readFile(new URL('../examples/microtask.json', import.meta.url), 'utf8'));
const startedAt = new Map<string, number>();
const latencies: number[] = [];
let finished = 0;
let failed = 0;
let resolveAll: () => void;
const allDone = new Promise<void>((r) => (resolveAll = r));
client.subscribe('microtask.flow.*.done', {
  callback: (_, m) => {
    const done = m.json<{ flowId: string; status: string }>();
    const t0 = startedAt.get(done.flowId);
    if (t0 === undefined) return;
    latencies.push(performance.now() - t0);
    if (done.status !== 'done') failed++;
    if (++finished === total) resolveAll();
    release();
  },
});
let slots = inFlight;
const waiters: Array<() => void> = [];
const release = () => (waiters.length ? waiters.shift()!() : slots++);
const acquire = () => (slots > 0 ? (slots--, Promise.resolve()) : new Promise<void>((r) => waiters.push(r)));

// Warm up: streams, consumer and worker ready, JIT warm.
const warm = (await client.request('microtask.flow.start.microtask', JSON.stringify({ input }), { timeout: 30_000 })).json<any>();
await new Promise<void>((resolve) => {
  const sub = client.subscribe(`microtask.flow.${warm.flowId}.done`, { callback: () => (sub.unsubscribe(), resolve()) });
});

const began = performance.now();
for (let i = 0; i < total; i++) {
  await acquire();
  const t0 = performance.now();
  client
    .request('microtask.flow.start.microtask', JSON.stringify({ input }), { timeout: 30_000 })
    .then((m) => startedAt.set(m.json<{ flowId: string }>().flowId, t0));
}
await allDone;
const seconds = (performance.now() - began) / 1000;
latencies.sort((a, b) => a - b);
const pct = (p: number) => latencies[Math.min(latencies.length - 1, Math.floor((p / 100) * latencies.length))]!.toFixed(1);
console.log(`| flows (1 microtask each) | in flight | flows/s | p50 ms | p99 ms | failed |`);
console.log(`|---|---|---|---|---|---|`);
console.log(`| ${total} | ${inFlight} | ${(total / seconds).toFixed(0)} | ${pct(50)} | ${pct(99)} | ${failed} |`);

worker.kill('SIGTERM');
await client.close();
await daemon.stop();
await bus.close();
await nats.close();
process.exit(0);
