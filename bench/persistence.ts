/**
 * The cost of durable flows: per-transition persistence for each snapshot store, and the
 * time to resume 1,000 unfinished flows. Instant scripted model; one process.
 *
 *   npx tsx bench/persistence.ts [flows=300] [unfinished=1000]
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createMicrotaskLogic, MicrotaskRunner } from '../src/actors/microtask.js';
import { ScriptedModel } from '../src/actors/model/ScriptedModel.js';
import { MemoryResultsStore } from '../src/actors/ResultsStore.js';
import { MemoryBus } from '../src/bus/MemoryBus.js';
import { connectNatsBus } from '../src/bus/NatsBus.js';
import { FlowHost } from '../src/flowHost.js';
import { provideFlows } from '../src/flows.js';
import { silentLogger } from '../src/log.js';
import { answerSchemas } from '../src/machines/answers.js';
import { FileSnapshotStore } from '../src/persistence/FileSnapshotStore.js';
import { KvSnapshotStore } from '../src/persistence/KvSnapshotStore.js';
import type { SnapshotStore } from '../src/persistence/SnapshotStore.js';
import { startNatsServer } from '../src/testing/natsServer.js';

const flows = Number(process.argv[2] ?? 300);
const unfinished = Number(process.argv[3] ?? 1000);
const input = {
  task: { taskType: 'write', system: 'w', prompt: 'Write.' },
  verify: { taskType: 'judge', system: 'j', prompt: 'Judge.' },
  threshold: 0.8,
  maxIterations: 3,
};

function hostWith(store: SnapshotStore, delayMs = 0) {
  // Three rounds: two verdicts below the threshold, then one above.
  let verdicts = 0;
  const model = new ScriptedModel((request) =>
    request.schemaName === 'verdict'
      ? { value: { score: ++verdicts % 3 === 0 ? 0.9 : 0.5, feedback: 'more' }, delayMs }
      : { text: 'draft', delayMs },
  );
  const runner = new MicrotaskRunner({ model, results: new MemoryResultsStore(), answers: answerSchemas });
  let saves = 0;
  const counting: SnapshotStore = { ...bind(store), save: (r, rev) => (saves++, store.save(r, rev)) };
  const host = new FlowHost({ flows: provideFlows({ microtask: createMicrotaskLogic(runner) }), store: counting, logger: silentLogger, outRoot: tmpdir() });
  return { host, saves: () => saves };
}
const bind = (store: SnapshotStore): SnapshotStore => ({
  save: store.save.bind(store),
  load: store.load.bind(store),
  list: store.list.bind(store),
  delete: store.delete.bind(store),
  moveAside: store.moveAside.bind(store),
  prune: store.prune.bind(store),
});

async function perTransition(name: string, store: SnapshotStore) {
  const { host, saves } = hostWith(store);
  const started = performance.now();
  // 16 flows at a time, as a daemon would run them side by side.
  for (let i = 0; i < flows; i += 16) {
    const ids = await Promise.all(Array.from({ length: Math.min(16, flows - i) }, () => host.start('feedback-loop', input)));
    await Promise.all(ids.map((id) => host.finished(id)));
  }
  const ms = performance.now() - started;
  return { name, ms, saves: saves(), perFlow: ms / flows, perSave: ms / saves() };
}

async function resumeTime(name: string, store: SnapshotStore) {
  const a = hostWith(store, 600_000).host;
  for (let i = 0; i < unfinished; i++) await a.start('feedback-loop', input);
  await new Promise((r) => setTimeout(r, 200));
  await a.stop();
  const b = hostWith(store, 600_000).host;
  const started = performance.now();
  const { resumed } = await b.resumeAll();
  const ms = performance.now() - started;
  await b.stop();
  return { name, resumed: resumed.length, ms };
}

const nats = await startNatsServer();
const bus = await connectNatsBus({ servers: [nats.url] });
const dir = await mkdtemp(join(tmpdir(), 'bench-persist-'));
const stores: Array<[string, () => Promise<SnapshotStore>]> = [
  ['memory KV (no durability: the floor)', async () => new KvSnapshotStore(await new MemoryBus().keyValue(`s${Math.random()}`.replace('.', '')))],
  ['file (fsync + rename + dir fsync)', async () => FileSnapshotStore.open(await mkdtemp(join(dir, 'f-')))],
  ['NATS KV (JetStream, CAS)', async () => new KvSnapshotStore(await bus.keyValue(`s${Date.now()}${Math.floor(Math.random() * 1e6)}`))],
];

console.log(`\n${flows} feedback-loop flows (3 rounds, 6 microtasks each), instant model, 16 at a time\n`);
console.log('| store | saves | ms per flow | ms per save (transition) | ratio to floor |');
console.log('|---|---|---|---|---|');
let floor = 0;
for (const [name, make] of stores) {
  const r = await perTransition(name, await make());
  floor ||= r.perSave;
  console.log(`| ${name} | ${r.saves} | ${r.perFlow.toFixed(2)} | ${r.perSave.toFixed(3)} | ${(r.perSave / floor).toFixed(1)}x |`);
}
console.log(`\nResume ${unfinished} unfinished flows (each waiting on a model call) after a stop\n`);
console.log('| store | resumed | ms | ms per flow |');
console.log('|---|---|---|---|');
for (const [name, make] of stores.slice(1)) {
  const r = await resumeTime(name, await make());
  console.log(`| ${name} | ${r.resumed} | ${r.ms.toFixed(0)} | ${(r.ms / r.resumed).toFixed(2)} |`);
}
await bus.close();
await nats.close();
await rm(dir, { recursive: true, force: true });
process.exit(0);
