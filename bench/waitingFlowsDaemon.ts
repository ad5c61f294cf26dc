/**
 * The daemon process of bench/waitingFlows.ts: `startDaemonService` as `microtask daemon`
 * runs it (NATS when NATS_URL is set, with leases; embedded lmdb otherwise), in a process
 * of its own so its CPU is its own. Written against what every version of services.ts
 * exports, so the bench can run it in an older tree for a before/after.
 *
 * WAIT_PHASE=start: starts WAIT_COUNT re-entrant flows whose review is a person's, waits
 *   until every one waits for it, prints `{"phase":"waiting",...}` and idles.
 * WAIT_PHASE=resume: starts the daemon (it resumes every unfinished flow), prints
 *   `{"phase":"resumed",...}` once its start returned.
 */
import { readFile } from 'node:fs/promises';
import { loadConfig } from '../src/config.js';
import { createLogger } from '../src/log.js';
import { mapLimit } from '../src/persistence/SnapshotStore.js';
import { connectBus } from '../src/composition.js';
import { startDaemonService } from '../src/services.js';

const bootedAt = performance.now();
const phase = process.env.WAIT_PHASE === 'resume' ? 'resume' : 'start';
const count = Number(process.env.WAIT_COUNT ?? 10_000);
const config = loadConfig();
const logger = createLogger(config.MICROTASK_LOG_LEVEL ?? 'warn');
const print = (data: object) => process.stdout.write(`${JSON.stringify(data)}\n`);

const bus = await connectBus(config, logger, 'daemon');
const began = performance.now();
const daemon = await startDaemonService(bus, config, logger);
const startedMs = performance.now() - began;
const { store } = daemon.parts;
// Which flows have saved their wait: counted as the daemon saves them (listing 10,000 KV
// records every few seconds would be most of the load).
const waiting = new Set<string>();
// Flows that ended instead (none, unless the machine is too slow for the start rate and
// tasks wait in the queue past their deadline): counted so the start phase ends, and reported.
const ended = new Set<string>();
const save = store.save.bind(store);
store.save = (record, expected, options) => {
  const saved = save(record, expected, options);
  void saved.then(
    () => {
      if (record.status === 'running' && record.state === 'awaitingReview') waiting.add(record.flowId);
      else waiting.delete(record.flowId);
      if (record.status !== 'running') ended.add(record.flowId);
    },
    () => undefined,
  );
  return saved;
};
const waitingNow = async () => (await store.list({ status: 'running' })).filter((f) => f.state === 'awaitingReview').length;

if (phase === 'start') {
  const { review: _review, ...example } = JSON.parse(await readFile(new URL('../examples/reentrant.json', import.meta.url), 'utf8'));
  const input = { ...example, personReview: {} };
  const t0 = performance.now();
  // 32 at once, a start that timed out tried again: on two cores, nats-server, the worker
  // and this daemon share the machine, and what is measured is the wait, not the start.
  // And no more than BUSY flows started and not yet waiting: flows arrive at the rate the
  // machine gets them to their wait, as they would in use. Unthrottled, 100,000 starts
  // queued their first microtasks faster than one worker answered, and the daemon's RSS
  // measured the backlog of live flows (a high-water mark V8 keeps), not waiting flows.
  const busy = Number(process.env.WAIT_BUSY ?? 1_000);
  let started = 0;
  await mapLimit(
    Array.from({ length: count }, (_, i) => i),
    32,
    async () => {
      while (started - waiting.size - ended.size >= busy) await new Promise((r) => setTimeout(r, 20));
      started++;
      for (let attempt = 1; ; attempt++) {
        try {
          return await daemon.startFlow('reentrant', input);
        } catch (e) {
          if (attempt >= 5) throw e;
          await new Promise((r) => setTimeout(r, 1_000));
        }
      }
    },
  );
  while (waiting.size + ended.size < count) await new Promise((r) => setTimeout(r, 500));
  print({ phase: 'waiting', flows: waiting.size, ended: ended.size, startMs: performance.now() - t0 });
} else {
  // Resumed: the daemon's start returned, every flow hosted (awake or asleep). Then the
  // bench's own check that they all wait (a full scan of the store, not part of the resume).
  print({ phase: 'resumed', startMs: startedMs, sinceBootMs: performance.now() - bootedAt });
  print({ phase: 'counted', waiting: await waitingNow() });
}
setInterval(() => undefined, 60_000);
