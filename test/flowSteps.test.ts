import { mkdtemp, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { handWrittenAnswer } from '../examples/offline/answers.js';
import type { FlowEvent } from '../src/daemon/protocol.js';
import { FlowHost } from '../src/flowHost.js';
import { provideFlows } from '../src/flows.js';
import { FileJournal } from '../src/journal/FileJournal.js';
import type { JournalEntry } from '../src/journal/Journal.js';
import { silentLogger } from '../src/log.js';
import { connectNatsBus } from '../src/bus/NatsBus.js';
import { BusJournal } from '../src/journal/BusJournal.js';
import type { Journal } from '../src/journal/Journal.js';
import { KvSnapshotStore } from '../src/persistence/KvSnapshotStore.js';
import { startNatsServer } from '../src/testing/natsServer.js';
import { FileSnapshotStore } from '../src/persistence/FileSnapshotStore.js';
import type { SnapshotStore } from '../src/persistence/SnapshotStore.js';
import { scripted } from './support/flows.js';

/**
 * Issue 12: every transition is a step, in order, none merged into a later save, none
 * announced before it is durable, root transitions announced with consecutive seqs. With
 * an instant model transitions follow each other faster than a save: before, a feedback
 * loop going generating → verifying → generating → verifying saved only some of them and
 * announced seq 1 then 5.
 */

const feedbackInput = JSON.parse(await readFile(new URL('../examples/feedback-loop.json', import.meta.url), 'utf8')) as Record<string, unknown>;

type Step = Extract<JournalEntry, { kind: 'step' }>;
type Transition = Extract<JournalEntry, { kind: 'transition' }>;

async function setup(store?: SnapshotStore) {
  const dir = await mkdtemp(join(tmpdir(), 'steps-'));
  const flowStore = store ?? (await FileSnapshotStore.open(join(dir, 'flows')));
  const journal = new FileJournal({ dir: join(dir, 'journal') });
  const runtime = scripted((request) => handWrittenAnswer(request));
  const events: FlowEvent[] = [];
  const durableAtAnnounce: boolean[] = [];
  const host = () =>
    new FlowHost({
      flows: provideFlows({ microtask: runtime.microtask }),
      store: flowStore,
      journal,
      logger: silentLogger,
      outRoot: dir,
      onEvent: async (event) => {
        events.push(event);
        // Nothing is announced before it is durable: the store already holds this seq.
        const stored = await flowStore.load(event.flowId);
        durableAtAnnounce.push((stored?.record.seq ?? -1) >= event.seq);
      },
    });
  return { dir, store: flowStore, journal, host, events, durableAtAnnounce, runtime };
}

describe('every transition on disk, announced without a gap', () => {
  it('100 flows with an instant model: every step stored in order, every seq 1..N announced once, each after its save', async () => {
    const s = await setup();
    const host = s.host();
    const ids = await Promise.all(Array.from({ length: 100 }, () => host.start('feedback-loop', feedbackInput)));
    const records = await Promise.all(ids.map((id) => host.finished(id)!));
    await s.journal.flush();
    expect(records.every((r) => r.status === 'done')).toBe(true);
    expect(s.durableAtAnnounce.every(Boolean)).toBe(true);

    for (const [i, flowId] of ids.entries()) {
      const entries = await s.journal.read(flowId);
      const steps = entries.filter((e): e is Step => e.kind === 'step');
      const rootTransitions = entries.filter((e): e is Transition => e.kind === 'transition' && e.actor === 'root');
      // Steps 1..K, each snapshot in the state its label says.
      expect(steps.map((e) => e.step)).toEqual(steps.map((_, n) => n + 1));
      expect(records[i]!.steps).toBe(steps.length);
      for (const step of steps) expect((step.snapshot as { value: unknown }).value).toEqual(step.rootState);
      // Every root state the machine passed through is a saved step (the loop goes
      // generating → verifying → generating → verifying → done: none merged away).
      const stepRootStates = steps.map((e) => JSON.stringify(e.rootState));
      const passed = rootTransitions.map((e) => JSON.stringify(e.state));
      let at = 0;
      for (const state of passed) {
        const found = stepRootStates.indexOf(state, at);
        expect(found, `root state ${state} of flow ${flowId} has no step after step ${at}`).toBeGreaterThanOrEqual(at);
        at = found;
      }
      expect(passed.filter((p) => p === '"verifying"').length).toBeGreaterThanOrEqual(2);
      // Announced: 1..N, once each, in order; the last is the end.
      const seqs = s.events.filter((e) => e.flowId === flowId).map((e) => e.seq);
      expect(seqs).toEqual(seqs.map((_, n) => n + 1));
      expect(seqs.length).toBe(rootTransitions.length);
      expect(s.events.filter((e) => e.flowId === flowId).at(-1)!.status).toBe('done');
    }
  });

  it('a flow resumed from any of its steps finishes with the uninterrupted output', async () => {
    const s = await setup();
    const first = s.host();
    const flowId = await first.start('feedback-loop', feedbackInput);
    const expected = (await first.finished(flowId))!;
    await s.journal.flush();
    const steps = (await s.journal.read(flowId)).filter((e): e is Step => e.kind === 'step');
    expect(steps.length).toBeGreaterThanOrEqual(5);
    const stored = (await s.store.load(flowId))!;
    for (const step of steps.slice(0, -1)) {
      // Rewind the record to this step and resume it in a new host.
      const copy = `${flowId}-from-${step.step}`;
      await s.store.save({ ...stored.record, flowId: copy, status: 'running', snapshot: step.snapshot as object, state: step.rootState as string, output: undefined }, null);
      const host = s.host();
      expect(await host.resume(copy)).toBe('resumed');
      const record = (await host.finished(copy))!;
      expect(record.status, `resumed from step ${step.step}`).toBe('done');
      expect((record.output as { best?: unknown }).best, `resumed from step ${step.step}`).toEqual((expected.output as { best?: unknown }).best);
    }
  });

  it('NATS: a store that keeps only the last snapshot (KV) has every step in the journal stream, each stored before it is announced', async () => {
    await using nats = await startNatsServer();
    const bus = await connectNatsBus({ servers: [nats.url] });
    try {
      const store = new KvSnapshotStore(await bus.keyValue('snapshots'));
      const real = await BusJournal.open(bus);
      // The stream's acks come late (a busy server): each step entry counts as stored only
      // once its real ack came and 30 ms more passed.
      const stored = new Set<string>();
      const journal: Journal = {
        ...real,
        append(entry, snapshotJson) {
          const acked = real.append(entry, snapshotJson);
          if (entry.kind !== 'step') return acked;
          return Promise.resolve(acked)
            .then(() => new Promise((r) => setTimeout(r, 30)))
            .then(() => void stored.add(`${entry.flowId}@${entry.at}`));
        },
        flush: () => real.flush(),
        read: (flowId) => real.read(flowId),
        follow: (flowId, handler) => real.follow(flowId, handler),
        remove: (flowIds) => real.remove(flowIds),
        prune: () => real.prune(),
        close: () => real.close(),
      };
      const runtime = scripted((request) => handWrittenAnswer(request));
      const unstoredAtAnnounce: string[] = [];
      const host = new FlowHost({
        flows: provideFlows({ microtask: runtime.microtask }),
        store,
        journal,
        logger: silentLogger,
        outRoot: await mkdtemp(join(tmpdir(), 'steps-nats-')),
        onEvent: async (event) => {
          // A running event names its step by the time it was taken.
          if (event.status === 'running' && !stored.has(`${event.flowId}@${event.at}`)) unstoredAtAnnounce.push(`${event.flowId} seq ${event.seq}`);
        },
      });
      const ids = await Promise.all(Array.from({ length: 20 }, () => host.start('feedback-loop', feedbackInput)));
      const records = await Promise.all(ids.map((id) => host.finished(id)!));
      expect(records.every((r) => r.status === 'done')).toBe(true);
      expect(unstoredAtAnnounce).toEqual([]);
      for (const [i, flowId] of ids.entries()) {
        const steps = (await real.read(flowId)).filter((e): e is Step => e.kind === 'step');
        expect(steps.map((e) => e.step)).toEqual(steps.map((_, n) => n + 1));
        expect(steps.length).toBe(records[i]!.steps);
      }
      await host.stop();
    } finally {
      await bus.close();
    }
  }, 60_000);

  it('NATS: a process that dies right after a save leaves no step missing from the journal; the resumed flow numbers on, its steps read once each', async () => {
    await using nats = await startNatsServer();
    const bus = await connectNatsBus({ servers: [nats.url] });
    try {
      const kv = new KvSnapshotStore(await bus.keyValue('snapshots'));
      const journal = await BusJournal.open(bus);
      // Calls of 20 ms: the flow's steps are saved over several saves, not one.
      const runtime = scripted((request) => {
        const answer = handWrittenAnswer(request);
        return typeof answer === 'string' ? { text: answer, delayMs: 20 } : { ...(answer as { value: unknown }), delayMs: 20 };
      });
      // The first process: its second save holding steps (the first after the start) lands,
      // and then it dies (the save never returns to it).
      let saves = 0;
      const dying: SnapshotStore = {
        save: async (record, expected, options) => {
          const revision = await kv.save(record, expected);
          if (options?.steps?.length && ++saves === 2) await new Promise(() => undefined);
          return revision;
        },
        load: (flowId) => kv.load(flowId),
        list: (filter) => kv.list(filter),
        delete: (flowId) => kv.delete(flowId),
        moveAside: (flowId, reason) => kv.moveAside(flowId, reason),
        prune: (olderThan, statuses) => kv.prune(olderThan, statuses),
      };
      const hostOn = (store: SnapshotStore) =>
        new FlowHost({ flows: provideFlows({ microtask: runtime.microtask }), store, journal, logger: silentLogger, outRoot: nats.storeDir });
      const first = hostOn(dying);
      const flowId = await first.start('feedback-loop', feedbackInput);
      while (saves < 2) await new Promise((r) => setTimeout(r, 5));
      await new Promise((r) => setTimeout(r, 100));
      // Abandoned, as a killed process is: a second host resumes from what the store holds.
      const second = hostOn(kv);
      expect(await second.resume(flowId)).toBe('resumed');
      const record = (await second.finished(flowId))!;
      expect(record.status).toBe('done');
      await journal.flush();
      const steps = (await journal.read(flowId)).filter((e): e is Step => e.kind === 'step');
      expect(steps.map((e) => e.step)).toEqual(Array.from({ length: record.steps! }, (_, n) => n + 1));
      for (const step of steps) expect((step.snapshot as { value: unknown }).value).toEqual(step.rootState);
      await second.stop();
    } finally {
      await bus.close();
    }
  }, 60_000);
});
