/**
 * The daemon process of part 3 (bench/scale.ts starts it, twice): a FlowHost wired as the
 * daemon wires it (snapshots after every transition, events and done messages to the flow
 * log; with NATS, microtasks to the work queue and leases on the flows), with a model that
 * takes ten minutes to answer.
 *
 * SCALE_PHASE=start: starts SCALE_COUNT feedback-loop flows, waits until every one waits on
 *   its model call (no save for a second), prints `{"phase":"started",...}` and idles.
 * SCALE_PHASE=resume: resumes every unfinished flow, prints `{"phase":"resumed",...}`.
 * SCALE_MODE=file (SCALE_DIR) or nats (NATS_URL).
 */
import { join } from 'node:path';
import { createMicrotaskLogic, MicrotaskRunner } from '../src/actors/microtask.js';
import { createRemoteMicrotaskLogic } from '../src/actors/remoteMicrotask.js';
import type { Bus } from '../src/bus/Bus.js';
import { connectNatsBus } from '../src/bus/NatsBus.js';
import { subjects } from '../src/bus/subjects.js';
import { loadConfig } from '../src/config.js';
import { FlowHost } from '../src/flowHost.js';
import { provideFlows } from '../src/flows.js';
import { silentLogger } from '../src/log.js';
import { answerSchemas } from '../src/contracts/answers.js';
import { LogResultsStore } from '../src/persistence/LogResultsStore.js';
import { FileSnapshotStore } from '../src/persistence/FileSnapshotStore.js';
import { LmdbResultsStore } from '../src/persistence/LmdbResultsStore.js';
import { LmdbSnapshotStore } from '../src/persistence/LmdbSnapshotStore.js';
import { LmdbStore } from '../src/persistence/LmdbStore.js';
import { KvSnapshotStore } from '../src/persistence/KvSnapshotStore.js';
import { mapLimit, type SnapshotStore } from '../src/persistence/SnapshotStore.js';
import { taskQueue } from '../src/services.js';
import { benchModel, feedbackInput } from './lib.js';

const mode = process.env.SCALE_MODE === 'nats' ? 'nats' : 'file';
const phase = process.env.SCALE_PHASE === 'resume' ? 'resume' : 'start';
const count = Number(process.env.SCALE_COUNT ?? 10_000);
const bootedAt = performance.now();
const config = loadConfig({ NATS_URL: process.env.NATS_URL, MICROTASK_DAEMON_ID: 'bench-scale-daemon' });
const names = subjects(config.MICROTASK_SUBJECT_PREFIX);

// Embedded, the host runs as `microtask run` runs it: no bus, no event log.
const bus: Bus | undefined = mode === 'nats' ? await connectNatsBus({ servers: config.NATS_URL! }) : undefined;
let store: SnapshotStore;
let microtask;
if (bus) {
  store = new KvSnapshotStore(await bus.keyValue(names.snapshotsBucket));
  microtask = createRemoteMicrotaskLogic({
    bus,
    queue: await taskQueue(bus, config),
    results: await bus.keyValue(names.resultsBucket),
    defaultTimeoutMs: config.MICROTASK_TIMEOUT_MS,
  });
} else {
  const dir = process.env.SCALE_DIR!;
  // Embedded mode's stores (SCALE_STORE=files: the file store before it).
  const db = process.env.SCALE_STORE === 'files' ? undefined : await LmdbStore.open(dir);
  store = db ? await LmdbSnapshotStore.open(db) : await FileSnapshotStore.open(join(dir, 'flows'));
  const results = db ? await LmdbResultsStore.open(db) : new LogResultsStore(join(dir, 'results'));
  const runner = new MicrotaskRunner({ model: benchModel(600_000), results, answers: answerSchemas });
  microtask = createMicrotaskLogic(runner);
}
let saves = 0;
let lastSaveAt = performance.now();
const counted: SnapshotStore = {
  get keepsSteps() {
    return store.keepsSteps;
  },
  save: (record, revision, options) => {
    saves++;
    lastSaveAt = performance.now();
    return store.save(record, revision, options);
  },
  ...(store.readSteps ? { readSteps: (flowId: string) => store.readSteps!(flowId) } : {}),
  load: (flowId) => store.load(flowId),
  list: (filter) => store.list(filter),
  delete: (flowId) => store.delete(flowId),
  moveAside: (flowId, reason) => store.moveAside(flowId, reason),
  prune: (olderThan, statuses) => store.prune(olderThan, statuses),
};
const log = bus ? await bus.eventLog(names.flowLog, { subjects: names.flowLogSubjects }) : undefined;
const host = new FlowHost({
  flows: provideFlows({ microtask }),
  store: counted,
  logger: silentLogger,
  outRoot: '/nonexistent',
  ...(mode === 'nats' ? { lease: { owner: config.MICROTASK_DAEMON_ID!, durationMs: config.MICROTASK_LEASE_MS } } : {}),
  ...(log
    ? {
        onEvent: async (event) => {
          await log.append(names.flowEvents(event.flowId), JSON.stringify(event));
        },
        onDone: async (done) => {
          await log.append(names.flowDone(done.flowId), JSON.stringify(done));
        },
      }
    : {}),
});

const memory = () => {
  const usage = process.memoryUsage();
  return { rssMB: usage.rss / 2 ** 20, heapUsedMB: usage.heapUsed / 2 ** 20, peakRssMB: process.resourceUsage().maxRSS / 1024 };
};
const print = (data: object) => process.stdout.write(`${JSON.stringify(data)}\n`);

if (phase === 'start') {
  const input = { ...feedbackInput, task: { ...feedbackInput.task, timeoutMs: 600_000 } };
  const began = performance.now();
  await mapLimit(
    Array.from({ length: count }, (_, i) => i),
    64,
    () => host.start('feedback-loop', input),
  );
  const startedMs = performance.now() - began;
  // Every flow waits on its model call once nothing has been saved for a second.
  while (performance.now() - lastSaveAt < 1_000) await new Promise((r) => setTimeout(r, 200));
  (globalThis as { gc?: () => void }).gc?.();
  // What the waiting flows cost while nothing happens: CPU over 10 s (polls every 5 s, lease renewals every 10 s).
  const cpuBefore = process.cpuUsage();
  await new Promise((r) => setTimeout(r, 10_000));
  const cpu = process.cpuUsage(cpuBefore);
  const idleCpuPercent = ((cpu.user + cpu.system) / 1000 / 10_000) * 100;
  print({ phase: 'started', flows: count, startedMs, saves, idleCpuPercent, ...memory() });
} else {
  const began = performance.now();
  const { resumed, failed } = await host.resumeAll();
  const resumeMs = performance.now() - began;
  print({ phase: 'resumed', resumed: resumed.length, failed: failed.length, resumeMs, sinceBootMs: performance.now() - bootedAt, ...memory() });
}
// Idle until killed.
setInterval(() => undefined, 60_000);
