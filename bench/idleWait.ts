/**
 * Part 5: what waiting costs over NATS. N microtasks of a daemon wait on a worker that does
 * not answer (none runs; their deadline is ten minutes away): over a quiet window, the
 * messages the daemon's connection sends to nats-server and receives from it per second
 * (the server's monitoring endpoint counts them), and the CPU of the daemon's process. The
 * flows' lease renewals are not in it (FlowHost's, part 3): this is the microtask actors alone.
 *
 * A first row with nothing waiting is the floor: the process and its connection alone.
 *
 *   npx tsx bench/idleWait.ts [--quick] [--waiting N] [--window-s S]
 */
import { pathToFileURL } from 'node:url';
import { createActor } from 'xstate';
import { createRemoteMicrotaskLogic } from '../src/actors/remoteMicrotask.js';
import { connectNatsBus } from '../src/bus/NatsBus.js';
import { loadConfig } from '../src/config.js';
import { taskQueue, resultsBucket } from '../src/services.js';
import { freePort, startNatsServer } from '../src/testing/natsServer.js';
import { flag, fmt, met, microtaskInput, note, quick, sleep, table } from './lib.js';

export interface IdleWaitRow {
  waiting: number;
  windowS: number;
  sentPerS: number;
  receivedPerS: number;
  cpuPercent: number;
  rssMB: number;
}

interface Connz {
  connections: { name?: string; in_msgs: number; out_msgs: number }[];
}

async function counts(monitorPort: number, name: string) {
  const connz = (await (await fetch(`http://127.0.0.1:${monitorPort}/connz?limit=1024`)).json()) as Connz;
  const c = connz.connections.find((x) => x.name === name);
  if (!c) throw new Error(`no connection ${name} on the bench's nats-server`);
  return { sent: c.in_msgs, received: c.out_msgs };
}

export async function idleWaitOnce(waiting: number, windowS: number): Promise<IdleWaitRow> {
  const monitorPort = await freePort();
  const nats = await startNatsServer({ args: ['-m', String(monitorPort)] });
  const config = loadConfig({ NATS_URL: nats.url });
  const bus = await connectNatsBus({ servers: [nats.url], name: 'bench-daemon' });
  try {
    const queue = await taskQueue(bus, config);
    const logic = createRemoteMicrotaskLogic({ bus, queue, results: await resultsBucket(bus, config), defaultTimeoutMs: 600_000 });
    note(`idle wait: starting ${waiting} NATS microtasks with no worker`);
    const actors = [];
    for (let i = 0; i < waiting; i++) {
      actors.push(createActor(logic, { input: { ...microtaskInput, key: `flow-idle-${i}/t`, timeoutMs: 600_000 } }).start());
      // In batches: 10,000 enqueues at once would only measure JetStream's backlog.
      if (i % 500 === 499) while ((await queue.depth()).waiting < i + 1 - 500) await sleep(50);
    }
    while ((await queue.depth()).waiting < waiting) await sleep(100);
    await sleep(2_000);
    (globalThis as { gc?: () => void }).gc?.();
    note(`idle wait: ${waiting} waiting; measuring ${windowS} s`);
    const before = await counts(monitorPort, 'bench-daemon');
    const cpuBefore = process.cpuUsage();
    const began = performance.now();
    await sleep(windowS * 1000);
    const cpu = process.cpuUsage(cpuBefore);
    const elapsedS = (performance.now() - began) / 1000;
    const after = await counts(monitorPort, 'bench-daemon');
    for (const actor of actors) actor.stop();
    return {
      waiting,
      windowS: elapsedS,
      // The monitoring requests themselves are HTTP, not NATS messages: not counted.
      sentPerS: (after.sent - before.sent) / elapsedS,
      receivedPerS: (after.received - before.received) / elapsedS,
      cpuPercent: ((cpu.user + cpu.system) / 1000 / (elapsedS * 1000)) * 100,
      rssMB: process.memoryUsage().rss / 2 ** 20,
    };
  } finally {
    await bus.close();
    await nats.close();
  }
}

export async function runIdleWait(): Promise<{ rows: IdleWaitRow[]; markdown: string }> {
  const waiting = Number(flag('waiting') ?? (quick ? 2_000 : 10_000));
  const windowS = Number(flag('window-s') ?? (quick ? 10 : 20));
  // The same process with nothing waiting first: what the connection (and Node) cost alone.
  const rows = [await idleWaitOnce(0, windowS), await idleWaitOnce(waiting, windowS)];
  const markdown = table(
    ['waiting microtasks', 'window s', 'daemon → NATS msgs/s', 'NATS → daemon msgs/s', 'daemon CPU (% of a core)', 'RSS MB', 'target (<100 NATS ops/s, <1% of a core)'],
    rows.map((r) => [
      r.waiting,
      fmt(r.windowS, 0),
      fmt(r.sentPerS, 1),
      fmt(r.receivedPerS, 1),
      fmt(r.cpuPercent, 2),
      fmt(r.rssMB, 0),
      `ops ${met(r.sentPerS + r.receivedPerS < 100)}, CPU ${met(r.cpuPercent < 1)}`,
    ]),
  );
  return { rows, markdown };
}

if (import.meta.url === pathToFileURL(process.argv[1]!).href) {
  const { markdown } = await runIdleWait();
  console.log(`\n## 5. Waiting over NATS: microtasks waiting on a worker that does not answer\n\n${markdown}`);
  process.exit(0);
}
