/**
 * Where a NATS-mode microtask's time goes: the daemon, one worker and a client in this
 * process, each on its own connection, every protocol message they send or get logged
 * with its time. Prints the timeline of one flow (sequential, instant model) and the
 * messages per flow by connection, and the round trips on its critical path.
 *
 *   npx tsx bench/traceNats.ts [--pattern microtask|feedback-loop] [--flows 200]
 */
import { connectNatsBus, type NatsBus } from '../src/bus/NatsBus.js';
import { subjects } from '../src/bus/subjects.js';
import { loadConfig } from '../src/config.js';
import { silentLogger } from '../src/log.js';
import { startDaemonService, startWorkerService } from '../src/services.js';
import { startNatsServer } from '../src/testing/natsServer.js';
import { benchModel, feedbackInput, flag, microtaskInput } from './lib.js';

type Line = { t: number; conn: string; dir: '→' | '←' | 'PING' | 'SUB' | 'UNSUB'; subject: string; bytes: number };
const lines: Line[] = [];
let tracing = false;

function trace(bus: NatsBus, conn: string) {
  const protocol = (bus.connection as unknown as { protocol: Record<string, unknown> }).protocol as {
    publish: (subject: string, payload?: unknown, options?: { reply?: string }) => void;
    processMsg: (msg: { sid: number; subject: Uint8Array }, data: Uint8Array) => void;
    flush: (p?: unknown) => unknown;
    sendCommand: (cmd: string | Uint8Array, ...payloads: Uint8Array[]) => void;
  };
  // SUB and UNSUB are commands, not messages: a subscription per pull or per task shows here.
  const sendCommand = protocol.sendCommand.bind(protocol);
  protocol.sendCommand = (cmd, ...payloads) => {
    if (tracing && typeof cmd === 'string' && /^(UNSUB|SUB) /.test(cmd)) {
      lines.push({ t: performance.now(), conn, dir: cmd.startsWith('SUB') ? 'SUB' : 'UNSUB', subject: cmd.startsWith('SUB') ? cmd.split(' ')[1]!.trim() : '<sid>', bytes: 0 });
    }
    return sendCommand(cmd, ...payloads);
  };
  const publish = protocol.publish.bind(protocol);
  protocol.publish = (subject, payload, options) => {
    if (tracing) lines.push({ t: performance.now(), conn, dir: '→', subject, bytes: (payload as Uint8Array | undefined)?.length ?? 0 });
    return publish(subject, payload, options);
  };
  const processMsg = protocol.processMsg.bind(protocol);
  protocol.processMsg = (msg, data) => {
    if (tracing) lines.push({ t: performance.now(), conn, dir: '←', subject: new TextDecoder().decode(msg.subject), bytes: data.length });
    return processMsg(msg, data);
  };
  const flush = protocol.flush.bind(protocol);
  protocol.flush = (p) => {
    if (tracing) lines.push({ t: performance.now(), conn, dir: 'PING', subject: '', bytes: 0 });
    return flush(p);
  };
}

const pattern = (flag('pattern') ?? 'microtask') as 'microtask' | 'feedback-loop';
const total = Number(flag('flows') ?? 200);
const inFlight = Number(flag('in-flight') ?? 1);
const input = pattern === 'microtask' ? microtaskInput : feedbackInput;

const nats = await startNatsServer();
const env = { NATS_URL: nats.url, MICROTASK_LOG_LEVEL: 'silent', MICROTASK_WORKER_CONCURRENCY: '64', MICROTASK_SUBJECT_PREFIX: 'microtask' };
const config = loadConfig(env);
const daemonBus = await connectNatsBus({ servers: [nats.url] });
const workerBus = await connectNatsBus({ servers: [nats.url] });
const clientBus = await connectNatsBus({ servers: [nats.url] });
trace(daemonBus, 'daemon');
trace(workerBus, 'worker');
trace(clientBus, 'client');
const daemon = await startDaemonService(daemonBus, config, silentLogger, { journal: false });
const worker = await startWorkerService(workerBus, config, silentLogger, { model: benchModel(), description: 'instant' });

const names = subjects();
const waiting = new Map<string, () => void>();
const doneAt = new Map<string, number>();
await clientBus.subscribe(names.flowDone('*'), (m) => {
  const { flowId } = m.json() as { flowId: string };
  doneAt.set(flowId, performance.now());
  waiting.get(flowId)?.();
});
async function runOne(): Promise<{ flowId: string; ms: number }> {
  const began = performance.now();
  const answer = (await clientBus.request(names.flowStart(pattern), JSON.stringify({ input }), { timeoutMs: 10_000 })).json() as { flowId: string };
  if (!doneAt.has(answer.flowId)) await new Promise<void>((resolve) => waiting.set(answer.flowId, resolve));
  return { flowId: answer.flowId, ms: doneAt.get(answer.flowId)! - began };
}

for (let i = 0; i < 50; i++) await runOne();
// Messages per flow, by connection and direction.
tracing = true;
lines.length = 0;
const durations: number[] = [];
const began = performance.now();
let started = 0;
await Promise.all(
  Array.from({ length: inFlight }, async () => {
    while (started++ < total) durations.push((await runOne()).ms);
  }),
);
const elapsed = performance.now() - began;
const counts = new Map<string, number>();
for (const l of lines) {
  const kind = l.subject.replace(/\.[A-Za-z0-9_-]*(feedback-loop|microtask)-[a-z0-9]+-[0-9a-f]{8}[A-Za-z0-9_./-]*/, '.<flow>').replace(/_INBOX\.[A-Za-z0-9]+\.?[A-Za-z0-9]*/, '_INBOX').replace(/\$JS\.ACK\..*/, '$JS.ACK.<…>').replace(/result\.[0-9a-f]{32}/, 'result.<key>');
  const k = `${l.conn} ${l.dir} ${kind}`;
  counts.set(k, (counts.get(k) ?? 0) + 1);
}
durations.sort((a, b) => a - b);
const at = (q: number) => durations[Math.min(total - 1, Math.floor(total * q))]!.toFixed(2);
console.log(`${pattern}, ${total} flows, ${inFlight} in flight: ${((total / elapsed) * 1000).toFixed(0)}/s, p50 ${at(0.5)} ms, p99 ${at(0.99)} ms`);
console.log('\nmessages per flow (connection, direction, subject):');
for (const [k, n] of [...counts].sort()) console.log(`  ${(n / total).toFixed(2).padStart(6)}  ${k}`);
const byConn = (conn: string) => lines.filter((l) => l.conn === conn && l.dir !== '←').length / total;
// Round trips: requests whose answer comes back to an inbox, and PINGs (a flush).
console.log(`sent per flow: daemon ${byConn('daemon').toFixed(1)}, worker ${byConn('worker').toFixed(1)}, client ${byConn('client').toFixed(1)}`);

// One flow's timeline.
lines.length = 0;
const one = await runOne();
tracing = false;
const t0 = lines[0]!.t;
console.log(`\none flow (${one.ms.toFixed(2)} ms):`);
for (const l of lines) console.log(`  ${(l.t - t0).toFixed(3).padStart(8)} ms  ${l.conn.padEnd(6)} ${l.dir.padEnd(4)} ${l.subject} ${l.bytes}B`);

await worker.stop();
await daemon.stop();
await Promise.all([daemonBus.close(), workerBus.close(), clientBus.close()]);
await nats.close();
process.exit(0);
