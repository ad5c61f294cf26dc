import { mkdtemp, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { handWrittenAnswer } from '../examples/offline/answers.js';
import { FlowHost, type KeptEvent } from '../src/flowHost.js';
import { sleepPlan } from '../src/flowSleep.js';
import { provideFlows } from '../src/flows.js';
import { silentLogger } from '../src/log.js';
import type { ReentrantOutput } from '../src/machines/reentrant.js';
import { LmdbSnapshotStore } from '../src/persistence/LmdbSnapshotStore.js';
import { LmdbStore } from '../src/persistence/LmdbStore.js';
import { scripted } from './support/flows.js';

// A flow that only waits (for a person) sleeps: the host keeps its record, not its actor
// tree, and restores it from the store when an event, its deadline or a cancel arrives
// (src/flowSleep.ts). What a user sees must not change: each case is checked against the
// same flow kept awake (sleepAfterMs: Infinity).

const example = JSON.parse(await readFile(new URL('../examples/reentrant.json', import.meta.url), 'utf8')) as Record<string, unknown>;
const { review: _review, ...withoutReview } = example;
const personReview = (maxWaitMs?: number) => ({ ...withoutReview, personReview: maxWaitMs ? { maxWaitMs } : {} });

async function setup() {
  const dir = await mkdtemp(join(tmpdir(), 'sleep-'));
  const store = await LmdbSnapshotStore.open(await LmdbStore.open(dir));
  const runtime = scripted((request) => handWrittenAnswer(request));
  const kept = new Map<string, KeptEvent[]>();
  const host = (sleepAfterMs?: number) =>
    new FlowHost({
      flows: provideFlows({ microtask: runtime.microtask }),
      store,
      logger: silentLogger,
      outRoot: dir,
      keptEvents: async (flowId) => kept.get(flowId) ?? [],
      ...(sleepAfterMs !== undefined ? { sleepAfterMs } : {}),
    });
  return { dir, store, runtime, host, kept };
}

async function until(what: string, check: () => boolean | Promise<boolean>, ms = 10_000) {
  const end = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** Asleep: hosted here (its record), with no live actor (no live waits). */
const asleep = (host: FlowHost, flowId: string) => host.running(flowId) !== undefined && host.liveWaits(flowId) === undefined;

/** The parts of an output that do not depend on when it ran. */
const stable = (output: ReentrantOutput) => ({ ...output, revisions: output.revisions.map(({ review, output: o }) => ({ review, output: o })) });

describe('a flow that only waits sleeps, and wakes as it was', () => {
  it('sleeps once its wait is saved (its record kept without the snapshot); an answer wakes it, and it ends as the same flow kept awake', async () => {
    const outputs: ReentrantOutput[] = [];
    for (const sleepAfterMs of [0, Number.POSITIVE_INFINITY]) {
      const s = await setup();
      const host = s.host(sleepAfterMs);
      const flowId = await host.start('reentrant', personReview());
      await until('the wait saved', async () => (await s.store.load(flowId))?.record.waiting !== undefined);
      if (sleepAfterMs === 0) {
        await until('the flow asleep', () => asleep(host, flowId));
        expect(host.running(flowId)!.snapshot).toBeNull();
        // What it waits for is still told, from its record.
        expect(host.waiting(flowId)).toEqual((await s.store.load(flowId))!.record.waiting);
      } else {
        await new Promise((r) => setTimeout(r, 50));
        expect(host.liveWaits(flowId)).toHaveLength(1);
      }
      // A rejection: the flow works (a model call), waits again, sleeps again.
      expect(await host.send(flowId, { eventId: 'r1', type: 'review', data: { approved: false, feedback: 'shorter' } })).toBe('applied');
      expect(await host.send(flowId, { eventId: 'r1', type: 'review', data: { approved: false, feedback: 'shorter' } })).toBe('duplicate');
      await until('the second pass waiting', () => s.runtime.model.calls.length === 2 && host.waiting(flowId)?.length === 1);
      if (sleepAfterMs === 0) await until('the flow asleep again', () => asleep(host, flowId));
      expect(await host.send(flowId, { eventId: 'r2', type: 'review', data: { approved: true } })).toBe('applied');
      const done = (await host.finished(flowId))!;
      expect(done.status).toBe('done');
      expect(done.received).toEqual(['r1', 'r2']);
      outputs.push(done.output as ReentrantOutput);
    }
    expect(outputs[0]).toMatchObject({ status: 'done', approved: true, passes: 2 });
    expect(stable(outputs[0]!)).toEqual(stable(outputs[1]!));
  });

  it('a refused event wakes it for nothing: refused as when awake, and it sleeps again', async () => {
    const s = await setup();
    const host = s.host(0);
    const flowId = await host.start('reentrant', personReview());
    await until('the flow asleep', () => asleep(host, flowId));
    await expect(host.send(flowId, { eventId: 'x1', type: 'score', data: { score: 1 } })).rejects.toThrow(/it waits for: review/);
    await until('the refusal saved', async () => (await s.store.load(flowId))!.record.refused?.includes('x1') === true);
    await until('the flow asleep again', () => asleep(host, flowId));
    expect(await host.send(flowId, { eventId: 'x1', type: 'review', data: { approved: true } })).toBe('duplicate');
  });

  it('its deadline wakes it: the timeout path, as awake', async () => {
    const s = await setup();
    const host = s.host(0);
    const flowId = await host.start('reentrant', personReview(400));
    await until('the flow asleep', () => asleep(host, flowId));
    const record = (await host.finished(flowId))!;
    const output = record.output as ReentrantOutput;
    expect(output).toMatchObject({ status: 'exhausted', approved: false, passes: 1 });
    expect(output.reason).toContain('no person reviewed pass 0 within 400 ms');
  });

  it('a cancel wakes it and ends it', async () => {
    const s = await setup();
    const host = s.host(0);
    const flowId = await host.start('reentrant', personReview());
    await until('the flow asleep', () => asleep(host, flowId));
    expect(await host.cancel(flowId)).toBe(true);
    expect((await host.finished(flowId))!.status).toBe('cancelled');
    expect((await s.store.load(flowId))!.record.status).toBe('cancelled');
  });

  it('written by another process while asleep (a cancel from the CLI): it wakes to find that, applies nothing, and its finished says so', async () => {
    const s = await setup();
    const host = s.host(0);
    const flowId = await host.start('reentrant', personReview());
    await until('the flow asleep', () => asleep(host, flowId));
    const stored = (await s.store.load(flowId))!;
    await s.store.save({ ...stored.record, status: 'cancelled', updatedAt: new Date().toISOString() }, stored.revision);
    expect(await host.send(flowId, { eventId: 'r1', type: 'review', data: { approved: true } })).toBe('not-here');
    expect((await host.finished(flowId))!.status).toBe('cancelled');
    expect(host.running(flowId)).toBeUndefined();
    const after = (await s.store.load(flowId))!.record;
    expect(after.status).toBe('cancelled');
    expect(after.received).toBeUndefined();
  });

  it('resumed after a stop, a waiting flow sleeps without an actor being built; an answer kept meanwhile wakes it at once', async () => {
    const s = await setup();
    const a = s.host(0);
    const one = await a.start('reentrant', personReview());
    const two = await a.start('reentrant', personReview());
    await until('both asleep', () => asleep(a, one) && asleep(a, two));
    await a.stop();
    expect(a.running(one)).toBeUndefined();
    s.kept.set(two, [{ eventId: 'k1', type: 'review', data: { approved: true }, sentAt: Date.now() }]);
    const b = s.host(0);
    const { resumed } = await b.resumeAll();
    expect(resumed.sort()).toEqual([one, two].sort());
    expect(asleep(b, one)).toBe(true);
    // The answer kept while nothing ran it was applied on resume.
    expect(((await b.finished(two))!.output as ReentrantOutput).approved).toBe(true);
    expect(await b.send(one, { eventId: 'r1', type: 'review', data: { approved: true } })).toBe('applied');
    expect(((await b.finished(one))!.output as ReentrantOutput).approved).toBe(true);
  });
});

describe('sleepPlan: which snapshots may sleep', () => {
  const machine = (children: Record<string, unknown>) => ({ status: 'active', value: 'waiting', children });
  it('a machine whose only actors are machines and wait timers: yes, waking at the earliest deadline', () => {
    const timer = (waitUntil?: number) => ({ src: 'waitTimer', snapshot: { status: 'active', input: waitUntil === undefined ? {} : { waitUntil } } });
    expect(sleepPlan(machine({}))).toEqual({});
    expect(sleepPlan(machine({ waitTimer: timer() }))).toEqual({});
    expect(sleepPlan(machine({ waitTimer: timer(500), child: { src: 'loop', snapshot: machine({ waitTimer: timer(200) }) } }))).toEqual({ wakeAt: 200 });
  });
  it('a microtask (or any other actor) in flight, at any depth: no', () => {
    const microtask = { src: 'microtask', snapshot: { status: 'active', input: { key: 'k', deadlineAt: 1 } } };
    expect(sleepPlan(machine({ generate: microtask }))).toBeUndefined();
    expect(sleepPlan(machine({ child: { src: 'loop', snapshot: machine({ generate: microtask }) } }))).toBeUndefined();
    expect(sleepPlan({ ...machine({}), status: 'done' })).toBeUndefined();
    expect(sleepPlan(null)).toBeUndefined();
  });
});

describe('resuming many flows reads them in one pass', () => {
  it('with a store that loads all at once and an inbox read at once: no read per flow; an answer kept for one still wakes it', async () => {
    const s = await setup();
    const a = s.host(0);
    const ids: string[] = [];
    for (let i = 0; i < 5; i++) ids.push(await a.start('reentrant', personReview()));
    await until('all asleep', () => ids.every((id) => asleep(a, id)));
    await a.stop();
    let loads = 0;
    let keptReads = 0;
    // The lmdb store, counting its loads, with a loadAll as a store that has one gives it.
    const store = new Proxy(s.store, {
      get(target, prop, receiver) {
        if (prop === 'load') return (flowId: string) => (loads++, target.load(flowId));
        if (prop === 'loadAll') return async () => Promise.all((await target.list({ status: 'running' })).map(async ({ flowId }) => (await target.load(flowId))!));
        return Reflect.get(target, prop, receiver);
      },
    });
    const b = new FlowHost({
      flows: provideFlows({ microtask: s.runtime.microtask }),
      store,
      logger: silentLogger,
      outRoot: s.dir,
      sleepAfterMs: 0,
      keptEvents: async () => (keptReads++, []),
      keptEventsAll: async () => new Map([[ids[0]!, [{ eventId: 'k1', type: 'review', data: { approved: true }, sentAt: Date.now() }]]]),
    });
    const { resumed } = await b.resumeAll();
    expect(resumed.sort()).toEqual([...ids].sort());
    // One load: the wake of the flow that had an answer kept (a wake reads its record).
    expect({ loads, keptReads }).toEqual({ loads: 1, keptReads: 0 });
    expect(((await b.finished(ids[0]!))!.output as ReentrantOutput).approved).toBe(true);
    expect(ids.slice(1).every((id) => asleep(b, id))).toBe(true);
  });
});

describe('a waiting flow resumed from its record alone', () => {
  it('lmdb: resumeAll reads no snapshot of a flow that sleeps (its record says so); its answer wakes it, reading it whole once', async () => {
    const s = await setup();
    const a = s.host(0);
    const flowId = await a.start('reentrant', personReview(60_000));
    await until('asleep', () => asleep(a, flowId));
    const saved = (await s.store.load(flowId))!.record;
    expect(saved.sleep).toEqual({ wakeAt: Date.parse(saved.waiting![0]!.until!) });
    await a.stop();
    let loads = 0;
    const store = new Proxy(s.store, {
      get(target, prop, receiver) {
        if (prop === 'load') return (id: string) => (loads++, target.load(id));
        const value = Reflect.get(target, prop, receiver);
        return typeof value === 'function' ? value.bind(target) : value;
      },
    });
    const b = new FlowHost({ flows: provideFlows({ microtask: s.runtime.microtask }), store, logger: silentLogger, outRoot: s.dir, sleepAfterMs: 0 });
    expect((await b.resumeAll()).resumed).toEqual([flowId]);
    expect(loads).toBe(0);
    expect(asleep(b, flowId)).toBe(true);
    expect(await b.send(flowId, { eventId: 'r1', type: 'review', data: { approved: true } })).toBe('applied');
    expect(((await b.finished(flowId))!.output as ReentrantOutput).approved).toBe(true);
    expect(loads).toBe(1);
  });
});
