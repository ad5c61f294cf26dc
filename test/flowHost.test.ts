import { mkdtemp, readdir, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { handWrittenAnswer } from '../examples/offline/answers.js';
import { FlowHost } from '../src/flowHost.js';
import { FileJournal } from '../src/journal/FileJournal.js';
import type { JournalEntry } from '../src/journal/Journal.js';
import { provideFlows } from '../src/flows.js';
import { silentLogger } from '../src/log.js';
import type { FlowEvent, FlowDone } from '../src/daemon/protocol.js';
import { FileSnapshotStore } from '../src/persistence/FileSnapshotStore.js';
import type { CorruptSnapshotError } from '../src/persistence/SnapshotStore.js';
import { scripted } from './support/flows.js';

const feedbackInput = JSON.parse(
  await (await import('node:fs/promises')).readFile(new URL('../examples/feedback-loop.json', import.meta.url), 'utf8'),
);

/** The hand-written answers, each after `ms`. */
/** Hand-written answers after `ms` (a number, or what the function says at each call). */
const slow = (ms: number | (() => number)) => (request: Parameters<typeof handWrittenAnswer>[0]) => {
  const answer = handWrittenAnswer(request);
  const delayMs = typeof ms === 'number' ? ms : ms();
  return typeof answer === 'string' ? { text: answer, delayMs } : { ...(answer as { value: unknown }), delayMs };
};

/**
 * A flow caught mid-way whatever the machine's load: the first `fast` calls answer at once,
 * the next ones not before the first host stops (aborted then), and every call after at once.
 */
const heldAfter = (fast: number) => {
  let calls = 0;
  let held = true;
  return { delay: () => (!held ? 0 : calls++ < fast ? 0 : 60_000), release: () => void (held = false) };
};

async function setup(script: Parameters<typeof scripted>[0] = (request) => handWrittenAnswer(request)) {
  const dir = await mkdtemp(join(tmpdir(), 'host-'));
  const corrupt: CorruptSnapshotError[] = [];
  // As the daemon and the CLI wire it: a corrupt entry is reported and moved aside.
  const moved: Promise<void>[] = [];
  const store: FileSnapshotStore = await FileSnapshotStore.open(dir, {
    onCorrupt: (e) => {
      corrupt.push(e);
      moved.push(store.moveAside(e.flowId, e.reason));
    },
  });
  const runtime = scripted(script);
  const events: FlowEvent[] = [];
  const done: FlowDone[] = [];
  const journal = new FileJournal({ dir: join(dir, 'journal') });
  const host = (lease?: { owner: string; durationMs: number }) =>
    new FlowHost({
      ...(lease ? { lease } : {}),
      journal,
      flows: provideFlows({ microtask: runtime.microtask }),
      store,
      logger: silentLogger,
      outRoot: dir,
      onEvent: async (e) => void events.push(e),
      onDone: async (d) => void done.push(d),
    });
  return { dir, store, runtime, host, events, done, corrupt, moved, journal };
}

describe('the flow host', () => {
  it('saves before it announces, and a flow stopped mid-way resumes from its last snapshot with the same output', async () => {
    const uninterrupted = await setup();
    const first = uninterrupted.host();
    const id = await first.start('feedback-loop', feedbackInput);
    const expected = (await first.finished(id))!;
    expect(expected.status).toBe('done');

    // The second call held, so the flow is caught mid-way (slow answers raced a loaded machine).
    const hold = heldAfter(1);
    const s = await setup(slow(hold.delay));
    const a = s.host();
    const flowId = await a.start('feedback-loop', feedbackInput);
    while (s.events.length < 2) await new Promise((r) => setTimeout(r, 5));
    // Every announced event was on disk first.
    const saved = (await s.store.load(flowId))!.record;
    expect(saved.seq).toBeGreaterThanOrEqual(s.events.length);
    hold.release();
    await a.stop();
    expect((await s.store.load(flowId))!.record.status).toBe('running');

    const b = s.host();
    expect(await b.resume(flowId)).toBe('resumed');
    const record = (await b.finished(flowId))!;
    expect(record.output).toEqual(expected.output);
    // Events go on from where they stopped, without gaps; the last one before the stop is
    // announced again on resume (it may not have gone out before a crash).
    const seqs = [...new Set(s.events.map((e) => e.seq))];
    expect(seqs).toEqual(seqs.map((_, i) => i + 1));
    expect(s.events.length - seqs.length).toBe(1);
    expect(s.done).toEqual([{ flowId, status: 'done', output: record.output }]);
  });

  it('moves a corrupt snapshot aside with its reason, and resumes the other flows', async () => {
    const s = await setup(slow(30));
    const a = s.host();
    const good = await a.start('feedback-loop', feedbackInput);
    const bad = await a.start('feedback-loop', feedbackInput);
    await a.stop();
    await writeFile(join(s.dir, `${bad}.json`), '{"revision": 3, "record": {"flowId": ');

    const b = s.host();
    const { resumed, failed } = await b.resumeAll();
    expect(resumed).toEqual([good]);
    expect(s.corrupt.map((e) => e.flowId)).toEqual([bad]);
    expect((await b.finished(good))!.status).toBe('done');
    await Promise.all(s.moved);
    expect(await s.store.load(bad)).toBeUndefined();
    expect(failed).toEqual([]);
    expect((await readdir(join(s.dir, 'corrupt'))).some((f) => f.startsWith(bad))).toBe(true);
  });

  it('marks a flow of an incompatible machine version failed, with a clear error, and resumes the others', async () => {
    const s = await setup(slow(30));
    const a = s.host();
    const old = await a.start('feedback-loop', feedbackInput);
    const current = await a.start('feedback-loop', feedbackInput);
    await a.stop();
    const stored = (await s.store.load(old))!;
    await s.store.save({ ...stored.record, machineVersion: 0 }, stored.revision);

    const b = s.host();
    const { resumed, failed } = await b.resumeAll();
    expect(resumed).toEqual([current]);
    expect(failed).toEqual([{ flowId: old, error: expect.stringContaining('version 0; this build runs version 1') }]);
    expect((await s.store.load(old))!.record).toMatchObject({ status: 'failed', error: { code: 'INCOMPATIBLE_SNAPSHOT' } });
    expect((await b.finished(current))!.status).toBe('done');
  });

  it('stops a flow whose snapshot another owner wrote, and announces nothing more', async () => {
    const s = await setup(slow(50));
    const a = s.host();
    const flowId = await a.start('feedback-loop', feedbackInput);
    while (s.events.length < 1) await new Promise((r) => setTimeout(r, 5));
    // Another daemon takes the flow over: it saves a new revision.
    const stored = (await s.store.load(flowId))!;
    await s.store.save({ ...stored.record, updatedAt: new Date().toISOString() }, stored.revision);
    const record = await a.finished(flowId);
    expect(record?.status).toBe('running');
    expect(a.running(flowId)).toBeUndefined();
    expect(s.done).toEqual([]);
  });

  it('with leases: another host leaves a live lease alone, and a host that stops gives its leases up', async () => {
    // Held until a stops: the flow must not end while b looks at it (40 ms answers raced a loaded machine).
    const hold = heldAfter(0);
    const s = await setup(slow(hold.delay));
    const a = s.host({ owner: 'a', durationMs: 60_000 });
    const flowId = await a.start('feedback-loop', feedbackInput);
    const b = s.host({ owner: 'b', durationMs: 60_000 });
    expect(await b.resume(flowId)).toBe('owned');
    hold.release();
    await a.stop();
    expect(await b.resume(flowId)).toBe('resumed');
    const record = (await b.finished(flowId))!;
    expect(record).toMatchObject({ status: 'done', owner: 'b' });
  });

  it('journals every saved step with its snapshot, each microtask with prompt and result, and the lifecycle, numbering steps on across a resume', async () => {
    const s = await setup(slow(30));
    const a = s.host();
    const flowId = await a.start('feedback-loop', feedbackInput);
    while (s.events.length < 3) await new Promise((r) => setTimeout(r, 5));
    await a.stop();
    const b = s.host();
    await b.resume(flowId);
    const record = (await b.finished(flowId))!;
    await s.journal.flush();
    const entries = await s.journal.read(flowId);

    const lifecycle = entries.filter((e) => e.kind === 'flow').map((e) => `${e.phase}:${e.status}`);
    expect(lifecycle).toEqual(['started:running', 'resumed:running', 'ended:done']);
    expect(entries[0]).toMatchObject({ kind: 'flow', pattern: 'feedback-loop', input: { ...feedbackInput, key: flowId } });
    expect(entries.at(-1)).toMatchObject({ kind: 'flow', phase: 'ended', output: record.output });

    const steps = entries.filter((e): e is Extract<JournalEntry, { kind: 'step' }> => e.kind === 'step');
    // One step per saved snapshot, numbered 1.. with no gap across the resume; the last
    // one is the snapshot the store holds.
    expect(steps.map((e) => e.step)).toEqual(steps.map((_, i) => i + 1));
    expect(record.steps).toBe(steps.length);
    expect(steps.at(-1)!.snapshot).toEqual(record.snapshot);
    expect(steps.some((e) => e.actor === 'root' && e.machine === 'feedbackLoop' && e.event.startsWith('xstate.done.actor'))).toBe(true);
    for (const e of steps) expect(e.rootState).toEqual((e.snapshot as { value: unknown }).value);

    // Every transition as it happened, the root's included, before any save.
    const transitions = entries.filter((e): e is Extract<JournalEntry, { kind: 'transition' }> => e.kind === 'transition');
    const rootStates = transitions.filter((e) => e.actor === 'root').map((e) => e.state);
    expect(rootStates).toContain('generating');
    expect(rootStates).toContain('verifying');
    expect(rootStates.at(-1)).toBe('done');
    expect(transitions.length).toBeGreaterThanOrEqual(steps.length);

    const microtasks = entries.filter((e): e is Extract<JournalEntry, { kind: 'microtask' }> => e.kind === 'microtask');
    const started = microtasks.filter((e) => e.phase === 'started');
    const finished = microtasks.filter((e) => e.phase === 'finished');
    expect(started.length).toBeGreaterThanOrEqual(2);
    expect(started[0]).toMatchObject({ taskType: feedbackInput.task.taskType, prompt: expect.any(String), system: expect.any(String) });
    expect(started[0]!.actor).not.toBe('root');
    // Each finished microtask started first, under the same key, with its result envelope.
    for (const f of finished) {
      expect(started.some((st) => st.key === f.key && st.actor === f.actor)).toBe(true);
      expect(f.result).toMatchObject({ key: f.key, success: true, usage: expect.any(Object) });
    }
    expect(finished.length).toBeGreaterThanOrEqual(2);
  });

  it('drains: the microtask in flight finishes and is saved, the next one never calls the model, and the resumed flow pays for nothing twice', async () => {
    const uninterrupted = await setup(slow(5));
    const reference = uninterrupted.host();
    const refId = await reference.start('feedback-loop', feedbackInput);
    await reference.finished(refId);
    const callsUninterrupted = uninterrupted.runtime.model.calls.length;

    const s = await setup(slow(150));
    const a = s.host();
    const flowId = await a.start('feedback-loop', feedbackInput);
    while (s.runtime.model.calls.length < 1) await new Promise((r) => setTimeout(r, 5));
    const drainStarted = Date.now();
    await a.drain(10_000);
    // It waited for the call in flight (150 ms), not the grace period.
    expect(Date.now() - drainStarted).toBeLessThan(5_000);
    expect(s.runtime.model.calls).toHaveLength(1);
    const saved = (await s.store.load(flowId))!.record;
    expect(saved.status).toBe('running');

    const b = s.host();
    expect(await b.resume(flowId)).toBe('resumed');
    expect((await b.finished(flowId))!.status).toBe('done');
    expect(s.runtime.model.calls).toHaveLength(callsUninterrupted);
  });

  it('drains within the grace period: a microtask still in flight then is stopped, and runs again on resume', async () => {
    const s = await setup(slow(2_000));
    const a = s.host();
    const flowId = await a.start('feedback-loop', feedbackInput);
    while (s.runtime.model.calls.length < 1) await new Promise((r) => setTimeout(r, 5));
    const drainStarted = Date.now();
    await a.drain(100);
    expect(Date.now() - drainStarted).toBeLessThan(1_500);
    expect((await s.store.load(flowId))!.record.status).toBe('running');
  });
});

