import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BusError, type Bus, type BusErrorCode, type Job } from '../../src/bus/Bus.js';

/**
 * The Bus contract, run against every transport (Hono-style shared suite): each
 * implementation's test file calls `runBusContract` with a factory. `second` gives
 * another Bus connected to the same place (for MemoryBus, the same instance), so
 * that cross-connection cases run where there are connections.
 */
export interface BusUnderTest {
  bus: Bus;
  second?: () => Promise<Bus>;
  /** Closes `bus` and every Bus `second` made. */
  close: () => Promise<void>;
}

/** Polls `condition` until it holds; fails with `what` after `timeoutMs`. */
export async function until(
  condition: () => boolean | Promise<boolean>,
  { timeoutMs = 5_000, intervalMs = 10, what = 'condition' }: { timeoutMs?: number; intervalMs?: number; what?: string } = {},
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await condition()) return;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(intervalMs);
  }
}

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

export async function expectBusError(promise: Promise<unknown>, code: BusErrorCode): Promise<BusError> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error, `expected a BusError ${code}`).toBeInstanceOf(BusError);
  expect((error as BusError).code).toBe(code);
  return error as BusError;
}

function deferred() {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => (resolve = r));
  return { promise, resolve };
}

export function runBusContract(name: string, makeBus: () => Promise<BusUnderTest>): void {
  describe(`Bus contract: ${name}`, () => {
    let underTest: BusUnderTest;
    let bus: Bus;
    let other: Bus;
    let counter = 0;
    /** Names unique to the test, so tests never see each other's messages or streams. */
    const unique = (base: string) => `${base}${++counter}${Date.now().toString(36)}`;

    beforeEach(async () => {
      underTest = await makeBus();
      bus = underTest.bus;
      other = underTest.second ? await underTest.second() : bus;
    });
    afterEach(async () => {
      await underTest.close();
    });

    describe('publish / subscribe', () => {
      it('matches * and > wildcards, and delivers nothing after unsubscribe', async () => {
        const root = unique('ps');
        const star: string[] = [];
        const rest: string[] = [];
        const starSub = await other.subscribe(`${root}.*.c`, (m) => void star.push(m.subject));
        await other.subscribe(`${root}.>`, (m) => void rest.push(m.subject));

        for (const s of [`${root}.b.c`, `${root}.b`, `${root}.b.c.d`, `x${root}.b.c`]) await bus.publish(s, 'x');
        await until(() => rest.length === 3 && star.length === 1, { what: 'wildcard deliveries' });
        expect(star).toEqual([`${root}.b.c`]);
        expect(rest).toEqual([`${root}.b.c`, `${root}.b`, `${root}.b.c.d`]);

        await starSub.unsubscribe();
        await bus.publish(`${root}.x.c`, 'after');
        await bus.publish(`${root}.done`, 'sentinel');
        // The sentinel was published after, so `star` would have had `x.c` by now.
        await until(() => rest.includes(`${root}.done`), { what: 'the sentinel' });
        expect(star).toEqual([`${root}.b.c`]);
      });

      it('carries headers and JSON, and says when a payload is not JSON', async () => {
        const subject = unique('hdr');
        const got: { headers?: Record<string, string>; value: unknown; text: string }[] = [];
        await other.subscribe(subject, (m) => {
          let value: unknown;
          try {
            value = m.json();
          } catch (e) {
            value = e;
          }
          got.push({ ...(m.headers ? { headers: m.headers } : {}), value, text: m.string() });
        });
        await bus.publish(subject, JSON.stringify({ a: 1 }), { headers: { 'X-Trace': 't-1' } });
        await bus.publish(subject, new TextEncoder().encode('not json'));
        await until(() => got.length === 2);
        expect(got[0]!.headers?.['X-Trace']).toBe('t-1');
        expect(got[0]!.value).toEqual({ a: 1 });
        expect(got[1]!.text).toBe('not json');
        expect(got[1]!.value).toBeInstanceOf(BusError);
        expect((got[1]!.value as BusError).code).toBe('NOT_JSON');
      });

      it('splits a queue group: each message to one member, plain subscribers get all', async () => {
        const subject = unique('qg');
        const a: string[] = [];
        const b: string[] = [];
        const all: string[] = [];
        await bus.subscribe(subject, (m) => void a.push(m.string()), { queue: 'workers' });
        await other.subscribe(subject, (m) => void b.push(m.string()), { queue: 'workers' });
        await other.subscribe(subject, (m) => void all.push(m.string()));
        for (let i = 0; i < 40; i++) await bus.publish(subject, String(i));
        await until(() => all.length === 40 && a.length + b.length === 40, { what: '40 deliveries to each side' });
        expect(new Set([...a, ...b]).size).toBe(40);
        expect(a.length).toBeGreaterThan(0);
        expect(b.length).toBeGreaterThan(0);
      });

      it('keeps delivering after a handler throws or rejects', async () => {
        const subject = unique('boom');
        const got: string[] = [];
        await other.subscribe(subject, (m) => {
          got.push(m.string());
          if (m.string() === '1') throw new Error('sync boom');
          if (m.string() === '2') return Promise.reject(new Error('async boom'));
        });
        for (const s of ['1', '2', '3']) await bus.publish(subject, s);
        await until(() => got.length === 3);
        expect(got).toEqual(['1', '2', '3']);
      });
    });

    describe('request / reply', () => {
      it('gets the answer of a responder on another connection', async () => {
        const subject = unique('rr');
        await other.subscribe(subject, (m) => other.respond(m, `echo:${m.string()}`));
        const reply = await bus.request(subject, 'hi', { timeoutMs: 2_000 });
        expect(reply.string()).toBe('echo:hi');
      });

      it('rejects with TIMEOUT when the responder stays silent', async () => {
        const subject = unique('silent');
        await other.subscribe(subject, () => {});
        const started = Date.now();
        const error = await expectBusError(bus.request(subject, 'hi', { timeoutMs: 200 }), 'TIMEOUT');
        expect(error.message).toContain(subject);
        expect(Date.now() - started).toBeGreaterThanOrEqual(150);
      });

      it('rejects with NO_RESPONDERS when nobody listens', async () => {
        await expectBusError(bus.request(unique('nobody'), 'hi', { timeoutMs: 2_000 }), 'NO_RESPONDERS');
      });

      it('survives a responder that throws', async () => {
        const subject = unique('flaky');
        let calls = 0;
        await other.subscribe(subject, async (m) => {
          if (++calls === 1) throw new Error('first call fails');
          await other.respond(m, 'ok');
        });
        await expectBusError(bus.request(subject, 'a', { timeoutMs: 200 }), 'TIMEOUT');
        expect((await bus.request(subject, 'b', { timeoutMs: 2_000 })).string()).toBe('ok');
      });
    });

    describe('work queue', () => {
      it('drops an enqueue whose id was seen within the duplicate window', async () => {
        const name = unique('dup');
        const queue = await bus.workQueue(name);
        expect(await queue.enqueue('a', 'one')).toEqual({ duplicate: false });
        expect(await queue.enqueue('a', 'again')).toEqual({ duplicate: true });
        expect(await queue.enqueue('b', 'two')).toEqual({ duplicate: false });
        const seen: string[] = [];
        const consumer = await (await other.workQueue(name)).consume(
          async (job) => {
            seen.push(`${job.id}:${new TextDecoder().decode(job.data)}`);
            await job.ack();
          },
          { concurrency: 1 },
        );
        // Jobs come in order: a duplicate stored after `a` would come before `b`.
        await until(() => seen.length >= 2);
        expect(seen).toEqual(['a:one', 'b:two']);
        await consumer.stop();
      });

      it("hands a job's headers to its handler (a trace context crosses the queue), and none to a job enqueued without", async () => {
        const name = unique('headers');
        const queue = await bus.workQueue(name);
        const traceparent = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01';
        await queue.enqueue('with', 'x', { headers: { traceparent } });
        await queue.enqueue('without', 'y');
        const seen: { id: string; traceparent: string | undefined }[] = [];
        const consumer = await (await other.workQueue(name)).consume(
          async (job) => {
            seen.push({ id: job.id, traceparent: job.headers?.traceparent });
            await job.ack();
          },
          { concurrency: 1 },
        );
        await until(() => seen.length >= 2);
        expect(seen).toEqual([
          { id: 'with', traceparent },
          { id: 'without', traceparent: undefined },
        ]);
        await consumer.stop();
      });

      it('runs at most `concurrency` jobs at once per consumer, and really reaches it', async () => {
        const queue = await bus.workQueue(unique('conc'));
        const limit = 3;
        const total = 7;
        let started = 0;
        let inFlight = 0;
        let maxInFlight = 0;
        const gates: ReturnType<typeof deferred>[] = [];
        const consumer = await queue.consume(
          async (job) => {
            started++;
            inFlight++;
            maxInFlight = Math.max(maxInFlight, inFlight);
            const gate = deferred();
            gates.push(gate);
            await gate.promise;
            inFlight--;
            await job.ack();
          },
          { concurrency: limit },
        );
        for (let i = 0; i < total; i++) await queue.enqueue(`job-${i}`, String(i));
        for (let released = 0; released < total; released++) {
          const expected = Math.min(total, released + limit);
          await until(() => started === expected, { what: `${expected} jobs started` });
          expect(inFlight).toBe(Math.min(limit, total - released));
          expect(maxInFlight).toBeLessThanOrEqual(limit);
          gates[released]!.resolve();
        }
        await until(() => inFlight === 0);
        expect(maxInFlight).toBe(limit);
        expect(started).toBe(total);
        await consumer.stop();
      });

      it('delivers a job again after retry(delay), not before the delay', async () => {
        const queue = await bus.workQueue(unique('retry'));
        const deliveries: { count: number; at: number }[] = [];
        const consumer = await queue.consume(
          async (job) => {
            deliveries.push({ count: job.deliveryCount, at: Date.now() });
            if (job.deliveryCount === 1) await job.retry(300);
            else await job.ack();
          },
          { concurrency: 2 },
        );
        await queue.enqueue('r', 'x');
        await until(() => deliveries.length === 2);
        expect(deliveries.map((d) => d.count)).toEqual([1, 2]);
        expect(deliveries[1]!.at - deliveries[0]!.at).toBeGreaterThanOrEqual(250);
        await consumer.stop();
      });

      it('delivers again after the ack wait when the handler neither acks nor calls working()', async () => {
        const queue = await bus.workQueue(unique('ackwait'), { ackWaitMs: 300 });
        const deliveries: { count: number; at: number }[] = [];
        const consumer = await queue.consume(
          async (job) => {
            deliveries.push({ count: job.deliveryCount, at: Date.now() });
            if (job.deliveryCount > 1) await job.ack();
          },
          { concurrency: 1 },
        );
        await queue.enqueue('w', 'x');
        await until(() => deliveries.length === 2);
        expect(deliveries.map((d) => d.count)).toEqual([1, 2]);
        expect(deliveries[1]!.at - deliveries[0]!.at).toBeGreaterThanOrEqual(250);
        await consumer.stop();
      });

      it('does not deliver a long job twice while its handler calls working()', async () => {
        const queue = await bus.workQueue(unique('long'), { ackWaitMs: 300 });
        const deliveries: string[] = [];
        let finished = false;
        const consumer = await queue.consume(
          async (job) => {
            deliveries.push(`${job.id}#${job.deliveryCount}`);
            if (job.id === 'long') {
              // Three ack waits long; a free slot would take a redelivery meanwhile.
              for (let i = 0; i < 9; i++) {
                await sleep(100);
                await job.working();
              }
              finished = true;
            }
            await job.ack();
          },
          { concurrency: 2 },
        );
        await queue.enqueue('long', 'x');
        await until(() => finished, { what: 'the long job' });
        await queue.enqueue('after', 'y');
        await until(() => deliveries.includes('after#1'));
        expect(deliveries).toEqual(['long#1', 'after#1']);
        await consumer.stop();
      });

      it('after maxDeliver deliveries dead-letters to the subject, where a late log reader finds it too', async () => {
        const deadLetterSubject = `${unique('dead')}.letters`;
        const name = unique('dl');
        const queue = await bus.workQueue(name, { maxDeliver: 3, deadLetterSubject });
        const letters: unknown[] = [];
        await other.subscribe(deadLetterSubject, (m) => void letters.push(m.json()));
        const counts: number[] = [];
        const consumer = await queue.consume(
          async (job) => {
            counts.push(job.deliveryCount);
            expect(job.maxDeliver).toBe(3);
            if (job.deliveryCount < job.maxDeliver) await job.retry(20);
            else await job.deadLetter('still failing');
          },
          { concurrency: 1 },
        );
        await queue.enqueue('j1', '{"n":1}');
        await until(() => letters.length === 1, { what: 'the dead letter' });
        expect(letters[0]).toEqual({ id: 'j1', reason: 'still failing', deliveryCount: 3, data: '{"n":1}' });
        expect(counts).toEqual([1, 2, 3]);

        const log = await other.eventLog(unique('deadlog'), { subjects: [deadLetterSubject] });
        const replayed: unknown[] = [];
        await log.replay(deadLetterSubject, (m) => void replayed.push(m.json()));
        await until(() => replayed.length === 1, { what: 'the replayed dead letter' });
        expect(replayed[0]).toEqual(letters[0]);
        await consumer.stop();
      });

      it('never delivers a job again after its last delivery', async () => {
        const ackWaitMs = 300;
        const queue = await bus.workQueue(unique('maxd'), { ackWaitMs, maxDeliver: 2 });
        const counts: number[] = [];
        const consumer = await queue.consume(
          async (job) => {
            counts.push(job.deliveryCount);
            if (job.deliveryCount === 2) throw new Error('fails on its last delivery too');
          },
          { concurrency: 1 },
        );
        await queue.enqueue('m', 'x');
        await until(() => counts.length === 2);
        // A negative check needs a bounded wait: past both the retry delay and the ack wait.
        await sleep(3 * ackWaitMs + 500);
        expect(counts).toEqual([1, 2]);
        await consumer.stop();
      });

      it('retries a job whose handler threw, and keeps delivering the others', async () => {
        const queue = await bus.workQueue(unique('throw'));
        const seen: string[] = [];
        const consumer = await other.workQueue(queue.name).then((q) =>
          q.consume(
            async (job) => {
              seen.push(`${job.id}#${job.deliveryCount}`);
              if (job.id === 'bad' && job.deliveryCount === 1) throw new Error('boom');
              await job.ack();
            },
            { concurrency: 1 },
          ),
        );
        await queue.enqueue('bad', 'x');
        await queue.enqueue('good', 'y');
        await until(() => seen.includes('bad#2') && seen.includes('good#1'), { what: 'bad retried and good done' });
        expect(seen.filter((s) => s.startsWith('bad'))).toEqual(['bad#1', 'bad#2']);
        expect(seen.filter((s) => s.startsWith('good'))).toEqual(['good#1']);
        await consumer.stop();
      });

      it('shares one queue between two consumers without processing a job twice', async () => {
        const name = unique('shared');
        const queue = await bus.workQueue(name);
        const byConsumer: Record<'a' | 'b', string[]> = { a: [], b: [] };
        const handler = (who: 'a' | 'b') => async (job: Job) => {
          byConsumer[who].push(job.id);
          await sleep(20);
          await job.ack();
        };
        const a = await queue.consume(handler('a'), { concurrency: 2 });
        const b = await (await other.workQueue(name)).consume(handler('b'), { concurrency: 2 });
        const total = 20;
        for (let i = 0; i < total; i++) await queue.enqueue(`s-${i}`, String(i));
        await until(() => byConsumer.a.length + byConsumer.b.length >= total, { what: `${total} jobs` });
        const all = [...byConsumer.a, ...byConsumer.b];
        expect(all).toHaveLength(total);
        expect(new Set(all).size).toBe(total);
        expect(byConsumer.a.length).toBeGreaterThan(0);
        expect(byConsumer.b.length).toBeGreaterThan(0);
        await Promise.all([a.stop(), b.stop()]);
      });

      it('stop() waits for the handlers in flight', async () => {
        const queue = await bus.workQueue(unique('stop'));
        const gate = deferred();
        let started = false;
        let finished = false;
        const consumer = await queue.consume(
          async (job) => {
            started = true;
            await gate.promise;
            await job.ack();
            finished = true;
          },
          { concurrency: 1 },
        );
        await queue.enqueue('s', 'x');
        await until(() => started);
        let finishedWhenStopped: boolean | undefined;
        const stopping = consumer.stop().then(() => (finishedWhenStopped = finished));
        gate.resolve();
        await stopping;
        expect(finishedWhenStopped).toBe(true);
      });
    });

    describe('key-value', () => {
      it('gets, puts, creates, updates with compare-and-set and deletes, with one revision counter per bucket', async () => {
        const bucket = unique('kv');
        const kv = await bus.keyValue(bucket);
        expect(await kv.get('a')).toBeUndefined();

        const r1 = await kv.put('a', 'one');
        const a = await kv.get('a');
        expect(a?.string()).toBe('one');
        expect(a?.revision).toBe(r1);
        const r2 = await kv.put('b', JSON.stringify({ x: 1 }));
        expect(r2).toBeGreaterThan(r1);
        expect((await kv.get('b'))?.json()).toEqual({ x: 1 });

        await expectBusError(kv.create('a', 'dup'), 'KV_EXISTS');
        const r3 = await kv.create('c', 'new');
        expect(r3).toBeGreaterThan(r2);

        const r4 = await kv.put('a', 'two');
        await expectBusError(kv.update('a', 'stale', r1), 'KV_WRONG_REVISION');
        const r5 = await kv.update('a', 'cas', r4);
        expect(r5).toBeGreaterThan(r4);

        // Another connection sees the same bucket.
        const seenElsewhere = await (await other.keyValue(bucket)).get('a');
        expect(seenElsewhere?.string()).toBe('cas');
        expect(seenElsewhere?.revision).toBe(r5);

        await kv.delete('a');
        expect(await kv.get('a')).toBeUndefined();
        const r6 = await kv.create('a', 'reborn');
        expect(r6).toBeGreaterThan(r5);
        expect((await kv.get('a'))?.string()).toBe('reborn');
      });

      it('lists keys, with subject-style filters, leaving deleted keys out', async () => {
        const kv = await bus.keyValue(unique('keys'));
        for (const k of ['flows.1.state', 'flows.2.state', 'flows.2.meta', 'other.x', 'gone']) await kv.put(k, 'v');
        await kv.delete('gone');
        expect((await kv.keys()).sort()).toEqual(['flows.1.state', 'flows.2.meta', 'flows.2.state', 'other.x']);
        expect((await kv.keys('flows.>')).sort()).toEqual(['flows.1.state', 'flows.2.meta', 'flows.2.state']);
        expect((await kv.keys('flows.*.state')).sort()).toEqual(['flows.1.state', 'flows.2.state']);
        expect(await kv.keys('none.>')).toEqual([]);
      });

      it('reads the current entries of many keys in one pass: last values, revisions as get gives them, deleted keys left out', async () => {
        const kv = await bus.keyValue(unique('entries'));
        for (let i = 0; i < 1_500; i++) await kv.put(`flows.${i}`, `v${i}`);
        await kv.put('flows.7', 'changed');
        await kv.put('other.x', 'v');
        await kv.delete('flows.3');
        const entries = await kv.entries('flows.>');
        expect(entries).toHaveLength(1_499);
        const byKey = new Map(entries.map((e) => [e.key, e]));
        expect(byKey.has('flows.3')).toBe(false);
        expect(byKey.get('flows.7')?.string()).toBe('changed');
        expect(byKey.get('flows.1499')?.string()).toBe('v1499');
        expect(byKey.get('flows.7')?.revision).toBe((await kv.get('flows.7'))?.revision);
        expect(await kv.entries('none.>')).toEqual([]);
      });

      it('watches a key: its current entry (or undefined), then every change, undefined when deleted', async () => {
        const bucket = unique('watch');
        const kv = await bus.keyValue(bucket);
        const elsewhere = await other.keyValue(bucket);
        const seen: (string | undefined)[] = [];
        const sub = await elsewhere.watch('w', (e) => void seen.push(e?.string()));
        await until(() => seen.length === 1);
        expect(seen).toEqual([undefined]);
        await kv.put('w', '1');
        await kv.put('unrelated', 'x');
        await kv.put('w', '2');
        await kv.delete('w');
        await until(() => seen.length === 4, { what: 'four watch events' });
        expect(seen).toEqual([undefined, '1', '2', undefined]);
        await sub.unsubscribe();

        const r = await kv.put('w', '3');
        const current: { value?: string; revision?: number }[] = [];
        const sub2 = await elsewhere.watch('w', (e) => void current.push({ value: e?.string(), revision: e?.revision }));
        await until(() => current.length === 1);
        expect(current[0]).toEqual({ value: '3', revision: r });
        await sub2.unsubscribe();
      });

      it('watches the updates of a whole bucket: each write after the watch, with its key, none from before, none after unsubscribing', async () => {
        const bucket = unique('updates');
        const kv = await bus.keyValue(bucket);
        await kv.put('before', 'old');
        const elsewhere = await other.keyValue(bucket);
        const seen: [string, string | undefined, number | undefined][] = [];
        const sub = await elsewhere.watchUpdates((key, e) => void seen.push([key, e?.string(), e?.revision]));
        const r1 = await kv.put('a/1', 'x');
        const r2 = await kv.put('sha256.b', 'y');
        await kv.delete('a/1');
        await until(() => seen.length === 3, { what: 'three updates' });
        expect(seen).toEqual([
          ['a/1', 'x', r1],
          ['sha256.b', 'y', r2],
          ['a/1', undefined, undefined],
        ]);
        await sub.unsubscribe();
        await kv.put('after', 'z');
        await sleep(100);
        expect(seen).toHaveLength(3);
      });
    });

    describe('event log', () => {
      it('with newOnly, tells only of messages stored after it started, each with when the log stored it', async () => {
        const name = unique('log');
        const root = unique('ev');
        const log = await bus.eventLog(name, { subjects: [`${root}.>`] });
        await log.append(`${root}.a.1`, 'old');
        const seen: Array<[string, number | undefined]> = [];
        const sub = await (await other.eventLog(name, { subjects: [`${root}.>`] })).replay(`${root}.a.*`, (m) => void seen.push([m.string(), m.storedAt]), { newOnly: true });
        await sleep(200);
        const before = Date.now();
        await log.append(`${root}.a.2`, 'new');
        await until(() => seen.length === 1, { what: 'the new message' });
        expect(seen[0]![0]).toBe('new');
        expect(seen[0]![1]).toBeGreaterThanOrEqual(before - 1_000);
        expect(seen[0]![1]).toBeLessThanOrEqual(Date.now() + 1_000);
        await sub.unsubscribe();
      });

      it('replays what was stored, oldest first and filtered, then the live messages', async () => {
        const name = unique('log');
        const root = unique('ev');
        const log = await bus.eventLog(name, { subjects: [`${root}.>`] });
        const seqs = [
          await log.append(`${root}.a.1`, '1'),
          await log.append(`${root}.b.1`, '2'),
          await log.append(`${root}.a.2`, '3'),
        ];
        expect(seqs[1]!).toBeGreaterThan(seqs[0]!);
        expect(seqs[2]!).toBeGreaterThan(seqs[1]!);

        const late = await other.eventLog(name, { subjects: [`${root}.>`] });
        const seen: string[] = [];
        const sub = await late.replay(`${root}.a.*`, (m) => {
          seen.push(m.string());
          if (m.string() === '3') throw new Error('a throwing reader loses nothing else');
        });
        await until(() => seen.length === 2);
        expect(seen).toEqual(['1', '3']);

        await log.append(`${root}.a.3`, '4');
        await log.append(`${root}.b.2`, '5');
        // A plain publish on a log subject is stored too (as JetStream captures it).
        await bus.publish(`${root}.a.4`, '6');
        await log.append(`${root}.a.5`, '7');
        await until(() => seen.length === 5, { what: 'the live messages' });
        expect(seen).toEqual(['1', '3', '4', '6', '7']);
        await sub.unsubscribe();
      });

      it('reads the stored messages of a filter, and purges them', async () => {
        const name = unique('read');
        const root = unique('ev');
        const log = await bus.eventLog(name, { subjects: [`${root}.*.h`] });
        expect(await log.read(`${root}.x.h`)).toEqual([]);
        for (let i = 1; i <= 3; i++) await log.append(`${root}.x.h`, String(i));
        await log.append(`${root}.y.h`, 'other');
        const late = await other.eventLog(name, { subjects: [`${root}.*.h`] });
        expect((await late.read(`${root}.x.h`)).map((m) => m.string())).toEqual(['1', '2', '3']);
        await late.purge(`${root}.x.h`);
        expect(await log.read(`${root}.x.h`)).toEqual([]);
        expect((await log.read(`${root}.y.h`)).map((m) => m.string())).toEqual(['other']);
      });

      it('refuses to append on a subject outside the log', async () => {
        const root = unique('ev');
        const log = await bus.eventLog(unique('strict'), { subjects: [`${root}.in.>`] });
        await expectBusError(log.append(`${root}.out.x`, '1'), 'INVALID_NAME');
      });
    });

    it('rejects with CLOSED once closed', async () => {
      await bus.close();
      await expectBusError(bus.publish('after.close', 'x'), 'CLOSED');
      await expectBusError(bus.keyValue('later'), 'CLOSED');
    });

    it('rejects invalid names and subjects with INVALID_NAME', async () => {
      await expectBusError(bus.workQueue('has space'), 'INVALID_NAME');
      await expectBusError(bus.publish('a..b', 'x'), 'INVALID_NAME');
      await expectBusError(bus.subscribe('a.>.b', () => {}), 'INVALID_NAME');
      const kv = await bus.keyValue(unique('names'));
      await expectBusError(kv.put('.leading', 'x'), 'INVALID_NAME');
    });
  });
}
