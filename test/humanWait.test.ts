import { mkdtemp, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { handWrittenAnswer } from '../examples/offline/answers.js';
import { FlowHost, type KeptEvent } from '../src/flowHost.js';
import { EventRefusedError } from '../src/flowWaits.js';
import { provideFlows } from '../src/flows.js';
import { silentLogger } from '../src/log.js';
import { LmdbSnapshotStore } from '../src/persistence/LmdbSnapshotStore.js';
import { LmdbStore } from '../src/persistence/LmdbStore.js';
import { patternInputSchemas } from '../src/patterns/index.js';
import type { ReentrantOutput } from '../src/machines/reentrant.js';
import type { FeedbackLoopOutput } from '../src/machines/feedbackLoop.js';
import { scripted } from './support/flows.js';

const example = JSON.parse(await readFile(new URL('../examples/reentrant.json', import.meta.url), 'utf8')) as Record<string, unknown>;
const { review: _review, ...withoutReview } = example;
const personReview = (maxWaitMs?: number) => ({ ...withoutReview, personReview: maxWaitMs ? { maxWaitMs } : {} });

async function setup() {
  const dir = await mkdtemp(join(tmpdir(), 'wait-'));
  const store = await LmdbSnapshotStore.open(await LmdbStore.open(dir));
  const runtime = scripted((request) => handWrittenAnswer(request));
  const kept = new Map<string, KeptEvent[]>();
  const host = () =>
    new FlowHost({
      flows: provideFlows({ microtask: runtime.microtask }),
      store,
      logger: silentLogger,
      outRoot: dir,
      keptEvents: async (flowId) => kept.get(flowId) ?? [],
    });
  return { dir, store, runtime, host, kept };
}

const until = async (check: () => boolean | Promise<boolean>, ms = 10_000) => {
  const end = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > end) throw new Error('timed out waiting');
    await new Promise((r) => setTimeout(r, 10));
  }
};

const waitingOf = async (store: LmdbSnapshotStore, flowId: string) => (await store.load(flowId))?.record.waiting;

describe('flows that wait for a person', () => {
  it('a reentrant pass reviewed by a person: the flow waits, saying for what, then goes on with the answer', async () => {
    const s = await setup();
    const host = s.host();
    const flowId = await host.start('reentrant', personReview());
    await until(async () => (await waitingOf(s.store, flowId)) !== undefined);
    const record = (await s.store.load(flowId))!.record;
    expect(record.state).toBe('awaitingReview');
    expect(record.waiting).toEqual([
      { actor: 'root', state: 'awaitingReview', for: "a person's review of the latest pass", events: ['review'], since: expect.any(String) },
    ]);
    expect(host.waiting(flowId)).toEqual(record.waiting);
    // Only the process step ran: the model was not asked to review.
    expect(s.runtime.model.calls.map((c) => c.request.schemaName ?? 'text')).toHaveLength(1);

    expect(await host.send(flowId, { eventId: 'r1', type: 'review', data: { approved: true, feedback: 'good' } })).toBe('applied');
    const done = (await host.finished(flowId))!;
    const output = done.output as ReentrantOutput;
    expect(done.status).toBe('done');
    expect(output).toMatchObject({ status: 'done', approved: true, passes: 1 });
    expect(output.revisions[0]!.review).toEqual({ approved: true, feedback: 'good', by: 'person' });
    expect(done.waiting).toBeUndefined();
    expect(done.received).toEqual(['r1']);
  });

  it('refuses what the flow does not wait for, or wrong data, in one line naming what it accepts; applies an id once', async () => {
    const s = await setup();
    const host = s.host();
    const flowId = await host.start('reentrant', personReview());
    await until(async () => (await waitingOf(s.store, flowId)) !== undefined);
    const refused = async (event: KeptEvent) => {
      const e = await host.send(flowId, event).then(() => undefined, (err: unknown) => err);
      expect(e).toBeInstanceOf(EventRefusedError);
      expect((e as Error).message).not.toContain('\n');
      return e as EventRefusedError;
    };
    const wrongType = await refused({ eventId: 'x1', type: 'score', data: { score: 1 } });
    expect(wrongType.code).toBe('EVENT_NOT_ACCEPTED');
    expect(wrongType.message).toContain('it waits for: review');
    const wrongData = await refused({ eventId: 'x2', type: 'review', data: { approved: 'yes' } });
    expect(wrongData.code).toBe('INVALID_EVENT');
    expect(wrongData.message).toContain('data.approved');

    // Rejected, with feedback: the next pass runs, and the flow waits again.
    expect(await host.send(flowId, { eventId: 'r1', type: 'review', data: { approved: false, feedback: 'shorter' } })).toBe('applied');
    expect(await host.send(flowId, { eventId: 'r1', type: 'review', data: { approved: false, feedback: 'shorter' } })).toBe('duplicate');
    await until(() => s.runtime.model.calls.length === 2 && host.waiting(flowId)?.length === 1);
    expect(s.runtime.model.calls[1]!.request.prompt).toContain('shorter');
    expect(await host.send(flowId, { eventId: 'r2', type: 'review', data: { approved: true } })).toBe('applied');
    const output = (await host.finished(flowId))!.output as ReentrantOutput;
    expect(output).toMatchObject({ status: 'done', passes: 2 });
    expect(output.revisions.map((r) => r.review?.approved)).toEqual([false, true]);
  });

  it('takes the timeout path when no one answers in time: the best so far, not approved, and why', async () => {
    const s = await setup();
    const host = s.host();
    const flowId = await host.start('reentrant', personReview(300));
    const record = (await host.finished(flowId))!;
    const output = record.output as ReentrantOutput;
    expect(output).toMatchObject({ status: 'exhausted', approved: false, passes: 1 });
    expect(output.output).toBeDefined();
    expect(output.reason).toContain('no person reviewed pass 0 within 300 ms');
  });

  it('after a stop, an answer sent meanwhile is applied on resume, before a deadline that passed meanwhile', async () => {
    const s = await setup();
    const a = s.host();
    const flowId = await a.start('reentrant', personReview(1_000));
    await until(async () => (await waitingOf(s.store, flowId)) !== undefined);
    const until1 = (await waitingOf(s.store, flowId))![0]!.until!;
    expect(Date.parse(until1)).toBeGreaterThan(Date.now());
    await a.stop();
    // The answer came while nothing ran the flow, before the deadline; the restart comes after it.
    s.kept.set(flowId, [{ eventId: 'late-start', type: 'review', data: { approved: true }, sentAt: Date.now() }]);
    await new Promise((r) => setTimeout(r, Date.parse(until1) - Date.now() + 50));
    const b = s.host();
    expect(await b.resume(flowId)).toBe('resumed');
    const output = (await b.finished(flowId))!.output as ReentrantOutput;
    expect(output).toMatchObject({ status: 'done', approved: true });
  });

  it('a deadline that passed while nothing ran the flow takes its timeout path on resume; a later answer is refused', async () => {
    const s = await setup();
    const a = s.host();
    const flowId = await a.start('reentrant', personReview(300));
    await until(async () => (await waitingOf(s.store, flowId)) !== undefined);
    const deadline = Date.parse((await waitingOf(s.store, flowId))![0]!.until!);
    await a.stop();
    await new Promise((r) => setTimeout(r, deadline - Date.now() + 100));
    s.kept.set(flowId, [{ eventId: 'too-late', type: 'review', data: { approved: true }, sentAt: Date.now() }]);
    const b = s.host();
    expect(await b.resume(flowId)).toBe('resumed');
    const record = (await b.finished(flowId))!;
    expect((record.output as ReentrantOutput).status).toBe('exhausted');
    expect(record.received).toBeUndefined();
  });

  it('a feedback loop scored by a person: a low score revises, a passing one ends it', async () => {
    const s = await setup();
    const input = JSON.parse(await readFile(new URL('../examples/feedback-loop.json', import.meta.url), 'utf8')) as Record<string, unknown>;
    const { verify: _verify, ...rest } = input;
    const host = s.host();
    const flowId = await host.start('feedback-loop', { ...rest, personVerify: {} });
    await until(() => host.waiting(flowId)?.[0]?.events[0] === 'score');
    expect(await host.send(flowId, { eventId: 's1', type: 'score', data: { score: 0.2, feedback: 'more detail' } })).toBe('applied');
    await until(() => s.runtime.model.calls.length === 2 && host.waiting(flowId)?.length === 1);
    expect(await host.send(flowId, { eventId: 's2', type: 'score', data: { score: 0.95 } })).toBe('applied');
    const output = (await host.finished(flowId))!.output as FeedbackLoopOutput;
    expect(output).toMatchObject({ status: 'done', score: 0.95, iterations: 2 });
    expect(output.history.map((h) => h.by)).toEqual(['person', 'person']);
  });

  it('the input says which judge: a model task or a person, not both, not neither', () => {
    const both = patternInputSchemas.reentrant.safeParse({ ...example, personReview: {} });
    expect(both.success).toBe(false);
    const neither = patternInputSchemas.reentrant.safeParse(withoutReview);
    expect(neither.success).toBe(false);
    expect(patternInputSchemas.reentrant.safeParse(personReview(60_000)).success).toBe(true);
    expect(patternInputSchemas['feedback-loop'].safeParse({ task: example.task, personVerify: { maxWaitMs: 0 }, threshold: 0.5, maxIterations: 2 }).success).toBe(false);
  });
});

describe('answers and the wait they are for', () => {
  it('an answer sent while the flow works (waits for nothing) is refused, not kept for its next wait', async () => {
    const s = await setup();
    // Slow answers: the event comes while the process step runs.
    const runtime = scripted((request) => {
      const answer = handWrittenAnswer(request);
      return typeof answer === 'string' ? { text: answer, delayMs: 200 } : { ...(answer as { value: unknown }), delayMs: 200 };
    });
    const host = new FlowHost({ flows: provideFlows({ microtask: runtime.microtask }), store: s.store, logger: silentLogger, outRoot: s.dir });
    const flowId = await host.start('reentrant', personReview());
    expect(host.waiting(flowId)).toEqual([]);
    await expect(host.send(flowId, { eventId: 'early', type: 'review', data: { approved: true } })).rejects.toThrow(/waits for no event now/);
    await until(() => host.waiting(flowId)?.length === 1);
    // Sent again, the same id is not applied: it was refused.
    expect(await host.send(flowId, { eventId: 'early', type: 'review', data: { approved: true } })).toBe('duplicate');
    expect(host.waiting(flowId)).toHaveLength(1);
    await until(async () => (await s.store.load(flowId))!.record.refused?.includes('early') === true);
  });

  it('an answer checked against one wait is not applied to the next: after a reject, an approve sent for the same pass is refused (STALE_EVENT), also after a restart', async () => {
    const s = await setup();
    const a = s.host();
    const flowId = await a.start('reentrant', personReview());
    await until(async () => (await waitingOf(s.store, flowId)) !== undefined);
    const since = (await waitingOf(s.store, flowId))![0]!.since!;
    expect(since).toBeDefined();
    await a.stop();
    // Both sent for pass 0 while nothing ran the flow: a reject, then (a change of mind) an approve.
    s.kept.set(flowId, [
      { eventId: 'x1', type: 'review', data: { approved: false, feedback: 'shorter' }, forWait: since },
      { eventId: 'x2', type: 'review', data: { approved: true }, forWait: since },
    ]);
    const b = s.host();
    await b.resume(flowId);
    await until(() => s.runtime.model.calls.length === 2 && b.waiting(flowId)?.length === 1);
    expect(b.waiting(flowId)![0]!.since).not.toBe(since);
    await until(async () => (await s.store.load(flowId))!.record.refused?.includes('x2') === true);
    await b.stop();
    // Read again on the next resume: x1 is applied already, x2 refused already; pass 1 still waits.
    const c = s.host();
    await c.resume(flowId);
    await new Promise((r) => setTimeout(r, 100));
    expect(c.waiting(flowId)).toHaveLength(1);
    const record = (await s.store.load(flowId))!.record;
    expect(record.status).toBe('running');
    expect(record.received).toEqual(['x1']);
    await c.stop();
  });
});
