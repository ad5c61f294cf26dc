import { mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { handWrittenAnswer } from '../examples/offline/answers.js';
import { FlowHost, type FlowHostOptions, type KeptEvent } from '../src/flowHost.js';
import { provideFlows } from '../src/flows.js';
import { silentLogger } from '../src/log.js';
import type { ReentrantOutput } from '../src/machines/reentrant.js';
import { LmdbSnapshotStore } from '../src/persistence/LmdbSnapshotStore.js';
import { LmdbStore } from '../src/persistence/LmdbStore.js';
import { scripted } from './support/flows.js';
import { assign, setup as machineSetup } from 'xstate';
import { z } from 'zod';
import { defineFlow } from '../src/flowCatalog.js';
import { connectNatsBus } from '../src/bus/NatsBus.js';
import { KvLeaseBoard } from '../src/leases.js';
import { KvSnapshotStore } from '../src/persistence/KvSnapshotStore.js';
import { startNatsServer } from '../src/testing/natsServer.js';
import { startRelay } from './support/relay.js';
import { StoreUnavailableError } from '../src/persistence/StoreUnavailableError.js';
import { reply, startFakeAnthropic } from '../src/testing/fakeAnthropic.js';
import { runCli, startCli, until as untilCli } from './support/cliProcess.js';
import { afterAll } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { connect } from '@nats-io/transport-node';
import { jetstream } from '@nats-io/jetstream';
import type { FeedbackLoopOutput } from '../src/machines/feedbackLoop.js';

// Attacks on waiting flows that sleep (src/flowSleep.ts, FlowHost sleep/wake/restore):
// events, deadlines, cancels, stops and a takeover racing the wake; a wait in a child; a
// user's `after` (must stay awake); `microtask run` answered by other processes. Each
// checks what a user sees: applied once, ended once, `finished` resolves.

const example = JSON.parse(await readFile(new URL('../examples/reentrant.json', import.meta.url), 'utf8')) as Record<string, unknown>;
const { review: _review, ...withoutReview } = example;
const personReview = (maxWaitMs?: number) => ({ ...withoutReview, personReview: maxWaitMs ? { maxWaitMs } : {} });

const loopExample = JSON.parse(await readFile(new URL('../examples/feedback-loop.json', import.meta.url), 'utf8')) as Record<string, unknown>;
const { verify: _verify, ...loopInput } = loopExample;

// A user's flow whose wait is in a CHILD: it invokes the feedback loop, scored by a person.
const ownLoop = defineFlow({
  name: 'own-loop',
  version: 1,
  input: z.object({ key: z.string().optional(), maxWaitMs: z.number().optional() }),
  machine: (blocks) =>
    machineSetup({
      types: {} as { input: { key: string; maxWaitMs?: number }; context: { input: { key: string; maxWaitMs?: number }; out: FeedbackLoopOutput | undefined } },
      actors: { loop: blocks.patterns.feedbackLoop! },
    }).createMachine({
      id: 'own-loop',
      context: ({ input }) => ({ input, out: undefined }),
      initial: 'looping',
      states: {
        looping: {
          invoke: {
            src: 'loop',
            id: 'loop',
            input: ({ context }: { context: { input: { key: string; maxWaitMs?: number } } }) =>
              ({ ...loopInput, key: `${context.input.key}/loop`, personVerify: context.input.maxWaitMs ? { maxWaitMs: context.input.maxWaitMs } : {} }) as never,
            onDone: { target: 'done', actions: assign({ out: ({ event }) => event.output as FeedbackLoopOutput }) },
          },
        },
        done: { type: 'final' },
      },
      output: ({ context }) => ({ status: 'done', result: context.out, usage: context.out?.usage }),
    }),
});

// A user's machine whose waiting state also has an XState `after` (not in a snapshot): it must stay awake.
const afterWait = defineFlow({
  name: 'after-wait',
  version: 1,
  input: z.object({ key: z.string().optional() }),
  machine: () =>
    machineSetup({}).createMachine({
      id: 'after-wait',
      context: { how: 'waiting' },
      initial: 'preparing',
      states: {
        preparing: { after: { 10: 'waiting' } },
        waiting: {
          meta: { wait: { for: 'a go', events: { go: z.object({}) } } },
          on: { go: { target: 'went', actions: assign({ how: 'went' }) } },
          after: { 400: { target: 'late', actions: assign({ how: 'late' }) } },
        },
        went: { type: 'final' },
        late: { type: 'final' },
      },
      output: ({ context }) => ({ status: 'done', result: context.how }),
    }),
});
// The same `after`, in a child machine's waiting state: the child's delays are the flow's (one actor system).
const afterChild = defineFlow({
  name: 'after-child',
  version: 1,
  input: z.object({ key: z.string().optional() }),
  machine: (blocks) =>
    machineSetup({
      types: {} as { context: { how: string } },
      actors: { child: afterWait.machine(blocks) },
    }).createMachine({
      id: 'after-child',
      context: { how: 'running' },
      initial: 'running',
      states: {
        running: { invoke: { src: 'child', id: 'child', input: {}, onDone: { target: 'done', actions: assign({ how: ({ event }) => String((event.output as { result: string }).result) }) } } },
        done: { type: 'final' },
      },
      output: ({ context }) => ({ status: 'done', result: context.how }),
    }),
});
const userFlows = [ownLoop, afterWait, afterChild];

const fakeModel = await startFakeAnthropic({ replies: () => reply.text('Exports of a million rows no longer run out of memory.') });
afterAll(() => fakeModel.close());
const CLI_PATH = new URL('../dist/cli.js', import.meta.url).pathname;
const daemons: ChildProcess[] = [];
afterAll(() => daemons.forEach((d) => d.kill('SIGKILL')));

async function setup() {
  const dir = await mkdtemp(join(tmpdir(), 'sleep-attack-'));
  const store = await LmdbSnapshotStore.open(await LmdbStore.open(dir));
  const runtime = scripted((request) => handWrittenAnswer(request));
  const kept = new Map<string, KeptEvent[]>();
  const host = (sleepAfterMs?: number, extra: Pick<FlowHostOptions, 'onEvent' | 'onDone' | 'keptEvents'> = {}) =>
    new FlowHost({
      flows: provideFlows({ microtask: runtime.microtask }, userFlows),
      store,
      logger: silentLogger,
      outRoot: dir,
      keptEvents: async (flowId) => kept.get(flowId) ?? [],
      ...(sleepAfterMs !== undefined ? { sleepAfterMs } : {}),
      ...extra,
    });
  return { dir, store, runtime, host, kept };
}

async function until(what: string, check: () => boolean | Promise<boolean>, ms = 10_000) {
  const end = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

const asleep = (host: FlowHost, flowId: string) => host.running(flowId) !== undefined && host.liveWaits(flowId) === undefined;
const ticks = async (n: number) => {
  for (let i = 0; i < n; i++) await Promise.resolve();
};

describe('waits in a child, and a user machine with `after`', () => {
  it("a user's flow whose wait is in a child (a feedback loop scored by a person) sleeps, an answer routed to the child wakes it, and it ends as awake", async () => {
    const outputs: FeedbackLoopOutput[] = [];
    for (const sleepAfterMs of [0, Number.POSITIVE_INFINITY]) {
      const s = await setup();
      const host = s.host(sleepAfterMs);
      const flowId = await host.start('own-loop', {});
      await until('the child waiting', async () => (await s.store.load(flowId))?.record.waiting?.[0]?.actor === 'loop');
      if (sleepAfterMs === 0) await until('the flow asleep', () => asleep(host, flowId));
      expect(await host.send(flowId, { eventId: 's1', type: 'score', data: { score: 0.2, feedback: 'more detail' } })).toBe('applied');
      await until('the second attempt waiting', async () => s.runtime.model.calls.length === 2 && (await s.store.load(flowId))!.record.waiting?.length === 1);
      if (sleepAfterMs === 0) await until('the flow asleep again', () => asleep(host, flowId));
      expect(await host.send(flowId, { eventId: 's1', type: 'score', data: { score: 0.9 } })).toBe('duplicate');
      expect(await host.send(flowId, { eventId: 's2', type: 'score', data: { score: 0.95 } })).toBe('applied');
      const done = (await host.finished(flowId))!;
      expect(done.received).toEqual(['s1', 's2']);
      outputs.push((done.output as { result: FeedbackLoopOutput }).result);
    }
    expect(outputs[0]).toMatchObject({ status: 'done', score: 0.95, iterations: 2 });
    expect(outputs[0]!.history.map((h) => h.score)).toEqual(outputs[1]!.history.map((h) => h.score));
  });

  it("a child's deadline wakes the sleeping flow once: the child's timeout path, the flow ends", async () => {
    const s = await setup();
    const host = s.host(0);
    const flowId = await host.start('own-loop', { maxWaitMs: 400 });
    await until('the flow asleep', () => asleep(host, flowId));
    const record = (await host.finished(flowId))!;
    expect(record.status).toBe('done');
    const out = (record.output as { result: FeedbackLoopOutput }).result;
    expect(out.reason).toContain('within 400 ms');
    expect(s.runtime.model.calls).toHaveLength(1);
  });

  it('a waiting state with an XState `after` never sleeps (the delay is not in the snapshot): the `after` fires', async () => {
    const s = await setup();
    const host = s.host(0);
    const flowId = await host.start('after-wait', {});
    await until('the wait saved', async () => (await s.store.load(flowId))?.record.waiting !== undefined);
    await new Promise((r) => setTimeout(r, 50));
    expect(asleep(host, flowId)).toBe(false);
    const record = (await host.finished(flowId))!;
    expect(record.output).toMatchObject({ result: 'late' });
  });

  it('the same `after` in a child machine that waits: the flow stays awake, the child times out', async () => {
    const s = await setup();
    const host = s.host(0);
    const flowId = await host.start('after-child', {});
    await until('the child waiting', async () => (await s.store.load(flowId))?.record.waiting?.[0]?.actor === 'child');
    await new Promise((r) => setTimeout(r, 50));
    expect(asleep(host, flowId)).toBe(false);
    expect((await host.finished(flowId))!.output).toMatchObject({ result: 'late' });
  });

  it('woken for nothing (a duplicate): no step saved, no new revision, and it sleeps again', async () => {
    const s = await setup();
    const host = s.host(0);
    const flowId = await host.start('reentrant', personReview());
    await until('the flow asleep', () => asleep(host, flowId));
    expect(await host.send(flowId, { eventId: 'r1', type: 'review', data: { approved: false, feedback: 'shorter' } })).toBe('applied');
    await until('asleep again', () => s.runtime.model.calls.length === 2 && host.waiting(flowId)?.length === 1 && asleep(host, flowId));
    const before = (await s.store.load(flowId))!;
    for (let i = 0; i < 5; i++) {
      expect(await host.send(flowId, { eventId: 'r1', type: 'review', data: { approved: false, feedback: 'shorter' } })).toBe('duplicate');
      await until('asleep again', () => asleep(host, flowId));
    }
    const after = (await s.store.load(flowId))!;
    expect(after.revision).toBe(before.revision);
    expect(after.record.steps).toBe(before.record.steps);
  });
});

describe('wakes racing each other, the deadline, a cancel, a stop', () => {
  it('with sleepAfterMs: awake for that long, then asleep; an answer sent around the moment it falls asleep is applied, every time', async () => {
    const s = await setup();
    const SLEEP_AFTER = 60;
    for (const offset of [-10, -3, -1, 0, 1, 2, 3, 5, 10]) {
      const host = s.host(SLEEP_AFTER);
      const flowId = await host.start('reentrant', personReview());
      let savedAt = 0;
      await until('the wait saved', async () => ((await s.store.load(flowId))?.record.waiting !== undefined ? ((savedAt = Date.now()), true) : false), 10_000);
      await new Promise((r) => setTimeout(r, Math.max(0, savedAt + SLEEP_AFTER + offset - Date.now())));
      expect(await host.send(flowId, { eventId: `ok${offset}`, type: 'review', data: { approved: true } })).toBe('applied');
      expect(((await host.finished(flowId))!.output as ReentrantOutput).approved).toBe(true);
    }
    const host = s.host(SLEEP_AFTER);
    const flowId = await host.start('reentrant', personReview());
    await until('the wait saved', async () => (await s.store.load(flowId))?.record.waiting !== undefined);
    expect(asleep(host, flowId)).toBe(false);
    await until('asleep after sleepAfterMs', () => asleep(host, flowId), 2_000);
  });

  it('two answers at once to a sleeping flow: woken once, the first applied, the second refused as awake; the same id twice: applied once', async () => {
    const s = await setup();
    const host = s.host(0);
    const flowId = await host.start('reentrant', personReview());
    await until('the flow asleep', () => asleep(host, flowId));
    const both = await Promise.allSettled([
      host.send(flowId, { eventId: 'a', type: 'review', data: { approved: false, feedback: 'shorter' } }),
      host.send(flowId, { eventId: 'b', type: 'review', data: { approved: true } }),
    ]);
    expect(both[0]).toEqual({ status: 'fulfilled', value: 'applied' });
    expect(both[1]!.status).toBe('rejected');
    expect(String((both[1] as PromiseRejectedResult).reason)).toContain('waits for no event now');
    await until('the second pass asleep', () => s.runtime.model.calls.length === 2 && host.waiting(flowId)?.length === 1 && asleep(host, flowId));
    // The same rejection three times at once: applied once (one more pass), the others duplicates.
    const same = await Promise.all([1, 2, 3].map(() => host.send(flowId, { eventId: 'c', type: 'review', data: { approved: false, feedback: 'again' } })));
    expect(same.sort()).toEqual(['applied', 'duplicate', 'duplicate']);
    await until('the third pass asleep', () => s.runtime.model.calls.length === 3 && host.waiting(flowId)?.length === 1 && asleep(host, flowId));
    expect(await host.send(flowId, { eventId: 'd', type: 'review', data: { approved: true } })).toBe('applied');
    const done = (await host.finished(flowId))!;
    expect(done.received).toEqual(['a', 'c', 'd']);
    expect(done.refused).toEqual(['b']);
    expect(s.runtime.model.calls).toHaveLength(3);
  });

  it('an answer arriving as its deadline wakes it: either applied (the flow approves) or too late (it times out), never both, ended once', async () => {
    const s = await setup();
    for (const offset of [-20, -5, 0, 2, 5, 20]) {
      const ends: string[] = [];
      const h = s.host(0, { onDone: async (d) => void ends.push(d.status) });
      const flowId = await h.start('reentrant', personReview(300));
      await until('the flow asleep', () => asleep(h, flowId));
      const until_ = Date.parse((await s.store.load(flowId))!.record.waiting![0]!.until!);
      await new Promise((r) => setTimeout(r, Math.max(0, until_ + offset - Date.now())));
      const sent = await h.send(flowId, { eventId: `late-${offset}`, type: 'review', data: { approved: true }, sentAt: Date.now() }).catch((e: Error) => e.message);
      const record = (await h.finished(flowId))!;
      const output = record.output as ReentrantOutput;
      if (sent === 'applied') {
        expect(output).toMatchObject({ approved: true });
        expect(record.received).toEqual([`late-${offset}`]);
      } else {
        expect(output.status).toBe('exhausted');
        expect(record.received).toBeUndefined();
      }
      await new Promise((r) => setTimeout(r, 50));
      expect(ends).toEqual([record.status]);
    }
  }, 30_000);

  it('a cancel racing the deadline wake: ended once, cancelled or timed out, and finished resolves', async () => {
    const s = await setup();
    for (const offset of [-2, 0, 1, 3]) {
      const host = s.host(0);
      const flowId = await host.start('reentrant', personReview(200));
      await until('the flow asleep', () => asleep(host, flowId));
      const at = Date.parse((await s.store.load(flowId))!.record.waiting![0]!.until!);
      await new Promise((r) => setTimeout(r, Math.max(0, at + offset - Date.now())));
      const cancelled = await host.cancel(flowId);
      const record = (await host.finished(flowId))!;
      expect(cancelled ? ['cancelled', 'done'] : ['done']).toContain(record.status);
      expect((await s.store.load(flowId))!.record.status).toBe(record.status);
    }
  });

  it('a stop while an answer is waking the flow: nothing is lost; the answer (kept) is applied on resume, once', async () => {
    const s = await setup();
    const a = s.host(0);
    const flowId = await a.start('reentrant', personReview());
    await until('the flow asleep', () => asleep(a, flowId));
    const event: KeptEvent = { eventId: 'k1', type: 'review', data: { approved: true }, sentAt: Date.now() };
    s.kept.set(flowId, [event]);
    const sent = a.send(flowId, event).catch((e: Error) => e.message);
    await a.stop();
    const outcome = await sent;
    expect(['applied', 'not-here']).toContain(outcome);
    expect(a.running(flowId)).toBeUndefined();
    const b = s.host(0);
    const stored = (await s.store.load(flowId))!.record;
    if (stored.status === 'running') {
      expect(await b.resume(flowId)).toBe('resumed');
      const record = (await b.finished(flowId))!;
      expect(record.received).toEqual(['k1']);
      expect((record.output as ReentrantOutput).approved).toBe(true);
    } else expect(stored.received).toEqual(['k1']);
  });

  it('resumed asleep: an answer sent while the kept events are read is applied once, after them', async () => {
    const s = await setup();
    const a = s.host(0);
    const flowId = await a.start('reentrant', personReview());
    await until('the flow asleep', () => asleep(a, flowId));
    await a.stop();
    // The inbox read is slow; it holds the first answer (a rejection), and the approval is sent during the read.
    let release!: () => void;
    const reading = new Promise<void>((r) => (release = r));
    const reject: KeptEvent = { eventId: 'k-reject', type: 'review', data: { approved: false, feedback: 'shorter' }, sentAt: Date.now() };
    const b = s.host(0, { keptEvents: async () => (await reading, [reject]) });
    const resumed = b.resume(flowId);
    await until('resumed asleep', () => asleep(b, flowId));
    // The same rejection delivered live (the inbox's follower) while the read is under way: a duplicate.
    const live = b.send(flowId, reject);
    release();
    expect(await resumed).toBe('resumed');
    expect(await live).toBe('duplicate');
    await until('the second pass waiting', () => s.runtime.model.calls.length === 2 && b.waiting(flowId)?.length === 1);
    expect(await b.send(flowId, { eventId: 'ok', type: 'review', data: { approved: true } })).toBe('applied');
    const record = (await b.finished(flowId))!;
    expect(record.received).toEqual(['k-reject', 'ok']);
    expect(record.output).toMatchObject({ approved: true, passes: 2 });
  });
});

describe('over NATS, two hosts: a takeover while the flow sleeps', () => {
  it("a host cut off lets its sleeping flow go; the other takes it over asleep and its deadline fires there, once; the first, back, wakes nothing", async () => {
    const LEASE_MS = 1_500;
    await using nats = await startNatsServer();
    const relay = await startRelay(nats.port);
    const dir = await mkdtemp(join(tmpdir(), 'sleep-takeover-'));
    const runtime = scripted((request) => handWrittenAnswer(request));
    const busA = await connectNatsBus({ servers: [relay.url], reconnectTimeWaitMs: 100 });
    const busB = await connectNatsBus({ servers: [nats.url] });
    const ends: Record<string, string[]> = { 'host-a': [], 'host-b': [] };
    const host = async (bus: typeof busA, owner: string) =>
      new FlowHost({
        flows: provideFlows({ microtask: runtime.microtask }),
        store: new KvSnapshotStore(await bus.keyValue('snapshots')),
        logger: silentLogger,
        outRoot: dir,
        storeRetryMs: 500,
        sleepAfterMs: 0,
        onDone: async (d) => void ends[owner]!.push(d.status),
        lease: { owner, durationMs: LEASE_MS, board: new KvLeaseBoard(await bus.keyValue('leases')) },
      });
    const a = await host(busA, 'host-a');
    const b = await host(busB, 'host-b');
    const store = new KvSnapshotStore(await busB.keyValue('snapshots'));
    try {
      a.startLeases();
      b.startLeases();
      const timed = await a.start('reentrant', personReview(4_000));
      const open = await a.start('reentrant', personReview());
      await until('both asleep at host-a', () => asleep(a, timed) && asleep(a, open));
      relay.cut();
      // An answer to host A while it is cut off: it cannot wake the flow (the store is unreachable); never applied there.
      const lost = a.send(open, { eventId: 'cut-1', type: 'review', data: { approved: true }, sentAt: Date.now() }).then(
        (o) => o,
        (e: Error) => `rejected: ${e.message}`,
      );
      await until('host-a letting them go', () => a.running(timed) === undefined && a.running(open) === undefined, 10_000);
      await until('host-b taking them over', () => b.running(timed) !== undefined && b.running(open) !== undefined, 10_000);
      // Taken over asleep: no actor built.
      expect(asleep(b, timed) && asleep(b, open)).toBe(true);
      relay.restore();
      expect(await lost).not.toBe('applied');
      // The deadline fires at host B, once.
      const record = (await b.finished(timed))!;
      expect((record.output as ReentrantOutput).status).toBe('exhausted');
      expect(await b.send(open, { eventId: 'ok', type: 'review', data: { approved: true }, sentAt: Date.now() })).toBe('applied');
      expect(((await b.finished(open))!.output as ReentrantOutput).approved).toBe(true);
      await new Promise((r) => setTimeout(r, LEASE_MS));
      expect(ends).toEqual({ 'host-a': [], 'host-b': ['done', 'done'] });
      expect((await store.load(open))!.record.received).toEqual(['ok']);
      expect(a.running(timed)).toBeUndefined();
    } finally {
      await a.stop();
      await b.stop();
      await busA.close();
      await busB.close();
      await relay.close();
    }
  }, 60_000);
});

describe('the embedded CLI: `microtask run` waits asleep, other processes answer', () => {
  const waitingFlow = (stderr: string) => /flow (\S+) waits for a person's review/.exec(stderr)?.[1];
  const cliSetup = async (maxWaitMs?: number) => {
    const state = await mkdtemp(join(tmpdir(), 'cli-sleep-'));
    const input = join(state, 'input.json');
    await writeFile(input, JSON.stringify(personReview(maxWaitMs)));
    return { env: { MICROTASK_STATE_DIR: state, ANTHROPIC_API_KEY: 'sk-test', ANTHROPIC_BASE_URL: fakeModel.url }, input };
  };

  it('the same rejection sent by two processes at once revises once; the approval ends it', async () => {
    const { env, input } = await cliSetup();
    const running = startCli(['run', 'reentrant', '--input', input, '--json', '--no-progress'], env);
    const flowId = await untilCli(() => waitingFlow(running.stderr()), 'the flow to wait');
    await new Promise((r) => setTimeout(r, 200));
    const both = await Promise.all([1, 2].map(() => runCli(['reject', flowId, '--feedback', 'name who benefits', '--id', 'r-1'], env)));
    expect(both.map((r) => r.code)).toEqual([0, 0]);
    await untilCli(() => running.stderr().split(`flow ${flowId} waits for`).length === 3, 'the second wait');
    expect((await runCli(['approve', flowId, '--id', 'ok-1'], env)).code).toBe(0);
    expect(await running.exited).toBe(0);
    const output = JSON.parse(running.stdout());
    expect(output).toMatchObject({ status: 'done', approved: true, passes: 2 });
    expect(output.revisions.map((r: { review: { by: string } }) => r.review.by)).toEqual(['person', 'person']);
  }, 60_000);

  it('its deadline passes while it sleeps: `run` wakes it and ends with the timeout path (exit 1)', async () => {
    const { env, input } = await cliSetup(1_500);
    const running = startCli(['run', 'reentrant', '--input', input, '--json', '--no-progress'], env);
    await untilCli(() => waitingFlow(running.stderr()), 'the flow to wait');
    expect(await running.exited).toBe(1);
    expect(JSON.parse(running.stdout())).toMatchObject({ status: 'exhausted', approved: false, passes: 1 });
  }, 60_000);
});

describe('two daemons over NATS: the owner frozen (SIGSTOP) while its flow sleeps', () => {
  it('the other takes the flow over asleep; an answer sent meanwhile is applied once, there; the first, thawed, lets it go', async () => {
    await using nats = await startNatsServer();
    const state = await mkdtemp(join(tmpdir(), 'sleep-daemons-'));
    const env = (id: string) => ({
      PATH: process.env.PATH ?? '',
      NATS_URL: nats.url,
      ANTHROPIC_API_KEY: 'sk-test',
      ANTHROPIC_BASE_URL: fakeModel.url,
      MICROTASK_LEASE_MS: '1500',
      MICROTASK_STATE_DIR: join(state, id),
      MICROTASK_DAEMON_ID: id,
      MICROTASK_LOG_LEVEL: 'warn',
      MICROTASK_INSPECTOR_PORT: '0',
    });
    const daemon = (id: string) => {
      const child = spawn(process.execPath, [CLI_PATH, 'daemon', '--worker'], { env: env(id), stdio: ['ignore', 'ignore', 'pipe'] });
      daemons.push(child);
      return child;
    };
    const client = await connect({ servers: nats.url });
    const bus = await connectNatsBus({ servers: [nats.url] });
    const request = async (subject: string, payload: unknown) => (await client.request(subject, JSON.stringify(payload), { timeout: 10_000 })).json<any>();
    try {
      const a = daemon('daemon-a');
      let started: any;
      for (let i = 0; i < 100 && !started?.ok; i++) {
        started = await request('microtask.flow.start.reentrant', { input: personReview() }).catch(() => undefined);
        if (!started?.ok) await new Promise((r) => setTimeout(r, 100));
      }
      const flowId = started.flowId as string;
      const store = new KvSnapshotStore(await bus.keyValue('snapshots'));
      await until('the flow waiting at daemon-a', async () => (await store.load(flowId))?.record.waiting !== undefined, 20_000);
      const calls = () => fakeModel.requests.length;
      const callsWaiting = calls();
      daemon('daemon-b');
      await new Promise((r) => setTimeout(r, 1_500));
      a.kill('SIGSTOP');
      await until('daemon-b taking the flow over', async () => (await store.load(flowId))?.record.owner === 'daemon-b', 20_000);
      // A rejection, published to the flow's inbox (flow.send may be routed to the frozen daemon): applied once, one more pass (one model call), waiting again.
      const js = jetstream(client);
      await js.publish(`microtask.flow.${flowId}.inbox`, JSON.stringify({ eventId: 'r-1', type: 'review', data: { approved: false, feedback: 'shorter' } }));
      a.kill('SIGCONT');
      await until('the second pass waiting', async () => {
        const r = (await store.load(flowId))?.record;
        return r?.received?.includes('r-1') === true && r.waiting !== undefined;
      }, 20_000);
      await new Promise((r) => setTimeout(r, 2_000));
      expect(calls() - callsWaiting).toBe(1);
      expect((await request('microtask.flow.send', { flowId, eventId: 'ok-1', type: 'review', data: { approved: true } })).ok).toBe(true);
      await until('the flow done', async () => (await store.load(flowId))?.record.status === 'done', 20_000);
      const record = (await store.load(flowId))!.record;
      expect(record.owner).toBe('daemon-b');
      expect(record.received).toEqual(['r-1', 'ok-1']);
      expect(record.output).toMatchObject({ approved: true, passes: 2 });
      expect(calls() - callsWaiting).toBe(1);
    } finally {
      for (const d of daemons) d.kill('SIGKILL');
      await client.close();
      await bus.close();
    }
  }, 90_000);
});

describe('an event racing the sleep transition', () => {
  it('sent while the flow is being put to sleep (its last announcement acknowledged in the same turn): applied, never "not-here"', async () => {
    const s = await setup();
    const outcomes: string[] = [];
    for (let n = 0; n < 40; n++) {
      let release!: () => void;
      const gate = new Promise<void>((r) => (release = r));
      const host = s.host(0, { onEvent: () => gate });
      const flowId = await host.start('reentrant', personReview());
      await until('the wait saved', async () => (await s.store.load(flowId))?.record.waiting !== undefined);
      // The sleep timer has fired and waits on the announcements.
      await new Promise((r) => setTimeout(r, 20));
      expect(asleep(host, flowId)).toBe(false);
      release();
      await ticks(n);
      const outcome = await host.send(flowId, { eventId: `ok-${n}`, type: 'review', data: { approved: true } });
      // "not-here" for a flow this host still runs (asleep): Daemon.deliver drops it, and it waits until a restart.
      outcomes.push(`${n}:${outcome}:${host.running(flowId) ? (asleep(host, flowId) ? 'asleep-here' : 'awake-here') : 'gone'}`);
      if (outcome === 'applied') expect(((await host.finished(flowId))!.output as ReentrantOutput).approved).toBe(true);
      await host.stop();
    }
    expect(outcomes.filter((o) => !o.includes(':applied:'))).toEqual([]);
  }, 60_000);
});


// A user's waiting state that notes its deadline and goes on waiting (a reminder): the wait
// timer fires once, awake. Asleep, every wake restores the timer, past its deadline, which
// fires again; the flow sleeps again with the same past deadline and wakes at once.
const remind = defineFlow({
  name: 'remind',
  version: 1,
  input: z.object({ key: z.string().optional() }),
  machine: (blocks) =>
    machineSetup({
      types: {} as { context: { reminders: number } },
      actors: { waitTimer: blocks.waitTimer },
    }).createMachine({
      id: 'remind',
      context: { reminders: 0 },
      initial: 'preparing',
      states: {
        preparing: { after: { 10: 'waiting' } },
        waiting: {
          meta: { wait: { for: 'a go', events: { go: z.object({}) } } },
          invoke: { src: 'waitTimer', id: 'waitTimer', input: { timeoutMs: 200 } },
          on: {
            'wait.timeout': { actions: assign({ reminders: ({ context }) => context.reminders + 1 }) },
            go: 'went',
          },
        },
        went: { type: 'final' },
      },
      output: ({ context }) => ({ status: 'done', result: context.reminders }),
    }),
});

describe('a wait that outlives its deadline', () => {
  it('a waiting state that stays after `wait.timeout` (a reminder): the deadline fires once asleep, as awake', async () => {
    const results: unknown[] = [];
    for (const sleepAfterMs of [Number.POSITIVE_INFINITY, 0]) {
      const s = await setup();
      const host = new FlowHost({ flows: provideFlows({ microtask: s.runtime.microtask }, [remind]), store: s.store, logger: silentLogger, outRoot: s.dir, sleepAfterMs });
      const flowId = await host.start('remind', {});
      await new Promise((r) => setTimeout(r, 700));
      const steps = (await s.store.load(flowId))!.record.steps;
      expect(await host.send(flowId, { eventId: 'go', type: 'go', data: {} })).toBe('applied');
      results.push({ reminders: ((await host.finished(flowId))!.output as { result: number }).result, steps });
    }
    expect(results[1]).toEqual(results[0]);
  });
});

describe('a wake when the store fails for a moment', () => {
  it('an answer whose wake finds the store unreachable once (a KV timeout) is still applied, as awake (no store read) it would be', async () => {
    const s = await setup();
    let failNext = false;
    // The real lmdb store; its next load fails once, as a NATS KV get times out during a leader election.
    const flaky = new Proxy(s.store, {
      get(target, prop, receiver) {
        if (prop === 'load') {
          return async (flowId: string) => {
            if (failNext) {
              failNext = false;
              throw new StoreUnavailableError('snapshot store: request timed out');
            }
            return target.load(flowId);
          };
        }
        const value = Reflect.get(target, prop, receiver) as unknown;
        return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value;
      },
    });
    const host = new FlowHost({ flows: provideFlows({ microtask: s.runtime.microtask }), store: flaky, logger: silentLogger, outRoot: s.dir, storeRetryMs: 2_000, sleepAfterMs: 0 });
    const flowId = await host.start('reentrant', personReview());
    await until('the flow asleep', () => asleep(host, flowId));
    failNext = true;
    // As Daemon.deliver does: an error other than a refusal is logged, the event not tried again.
    const outcome = await host.send(flowId, { eventId: 'ok', type: 'review', data: { approved: true }, sentAt: Date.now() }).catch((e: Error) => `rejected: ${e.message}`);
    const ended = await Promise.race([host.finished(flowId), new Promise((r) => setTimeout(() => r('still asleep'), 8_000))]);
    expect({ outcome, ended: typeof ended === 'string' ? ended : (ended as { status: string }).status }).toEqual({ outcome: 'applied', ended: 'done' });
  }, 15_000);
});

// A user's flow whose very first state waits: its first save (made before the actor
// starts) must already say so, or it never sleeps and `flow.get` shows no wait.
const gateFirst = defineFlow({
  name: 'gate-first',
  version: 1,
  input: z.object({ key: z.string().optional() }),
  machine: () =>
    machineSetup({}).createMachine({
      id: 'gate-first',
      initial: 'waiting',
      states: {
        waiting: { meta: { wait: { for: 'a go', events: { go: z.object({}) } } }, on: { go: 'went' } },
        went: { type: 'final' },
      },
      output: () => ({ status: 'done' }),
    }),
});

describe('a flow whose first state waits', () => {
  it('its first save says what it waits for, it sleeps, and an answer ends it', async () => {
    const s = await setup();
    const told: string[] = [];
    const host = new FlowHost({ flows: provideFlows({ microtask: s.runtime.microtask }, [gateFirst]), store: s.store, logger: silentLogger, outRoot: s.dir, sleepAfterMs: 0, onWaiting: (flowId) => void told.push(flowId) });
    const flowId = await host.start('gate-first', {});
    expect((await s.store.load(flowId))!.record.waiting).toEqual([{ actor: 'root', state: 'waiting', for: 'a go', events: ['go'] }]);
    expect(told).toEqual([flowId]);
    await until('the flow asleep', () => host.running(flowId) !== undefined && host.liveWaits(flowId) === undefined);
    expect(await host.send(flowId, { eventId: 'g1', type: 'go', data: {} })).toBe('applied');
    expect((await host.finished(flowId))!.status).toBe('done');
  });
});
