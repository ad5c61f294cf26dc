import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  CorruptSnapshotError,
  SnapshotConflictError,
  SnapshotStoreError,
  type FlowSnapshotRecord,
  type SnapshotStore,
  type SnapshotStoreErrorCode,
  type SnapshotStoreOptions,
} from '../../src/persistence/SnapshotStore.js';

/**
 * The SnapshotStore contract, run against every implementation (Hono-style shared
 * suite): each implementation's test file calls `runSnapshotStoreContract` with a factory
 * that makes an empty store with the given options.
 */
export interface SnapshotStoreUnderTest {
  store: SnapshotStore;
  /** Writes `raw` where the store keeps `flowId` (to test corruption). */
  corrupt(flowId: string, raw: string): Promise<void>;
  /** Another store over the same data, as another daemon would have (when the store supports several). */
  second?: () => Promise<SnapshotStore>;
  close(): Promise<void>;
}

export async function expectStoreError(promise: Promise<unknown>, code: SnapshotStoreErrorCode): Promise<SnapshotStoreError> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error, `expected a SnapshotStoreError ${code}`).toBeInstanceOf(SnapshotStoreError);
  expect((error as SnapshotStoreError).code).toBe(code);
  return error as SnapshotStoreError;
}

/** A record with JSON data of every kind, as a machine's persisted snapshot has. */
export function flowRecord(flowId: string, overrides: Partial<FlowSnapshotRecord> = {}): FlowSnapshotRecord {
  return {
    flowId,
    pattern: 'feedbackLoop',
    machineId: 'feedbackLoop',
    machineVersion: 1,
    status: 'running',
    state: { generating: 'waiting' },
    updatedAt: '2025-01-02T03:04:05.678Z',
    snapshot: {
      status: 'active',
      value: { generating: 'waiting' },
      context: {
        iteration: 2,
        threshold: 0.8,
        best: null,
        history: [{ score: 0.5, feedback: 'too short — «say more»' }, { score: -1.25e-3, feedback: '' }],
        flags: [true, false],
        nested: { deep: { deeper: [[1, 2], [], {}] } },
      },
      children: { generate: { src: 'microtask', snapshot: { status: 'active', input: { key: `${flowId}/generate/2` } } } },
      historyValue: {},
    },
    requestId: 'req-1',
    ...overrides,
  };
}

export function runSnapshotStoreContract(name: string, make: (options: SnapshotStoreOptions) => Promise<SnapshotStoreUnderTest>): void {
  describe(`SnapshotStore contract: ${name}`, () => {
    let underTest: SnapshotStoreUnderTest;
    let store: SnapshotStore;
    let reported: CorruptSnapshotError[];

    beforeEach(async () => {
      reported = [];
      underTest = await make({ onCorrupt: (e) => void reported.push(e) });
      store = underTest.store;
    });
    afterEach(async () => {
      await underTest.close();
    });

    describe('save and load', () => {
      it('round-trips a new record (deep equal) and gives nothing for an unknown flow', async () => {
        const record = flowRecord('flow-a', { status: 'done', output: { files: ['a.ts'], ok: true }, error: { code: 'X', message: 'm' } });
        const revision = await store.save(record, null);
        expect(revision).toBeGreaterThan(0);
        const loaded = await store.load('flow-a');
        expect(loaded).toEqual({ record, revision });
        // JSON data only: what comes back is a copy, not the object saved.
        expect(loaded!.record.snapshot).not.toBe(record.snapshot);
        expect(await store.load('flow-unknown')).toBeUndefined();
      });

      it("saved with its steps, loads back the record with the last step's snapshot, and its own where the last step is not its", async () => {
        const record = flowRecord('flow-steps', { steps: 2, seq: 2 });
        const step = (n: number, snapshot: unknown) => ({
          step: n,
          at: '2025-01-02T03:04:05.678Z',
          actor: 'root',
          machine: 'feedbackLoop',
          state: 'generating',
          event: 'xstate.init',
          rootState: 'generating',
          snapshotJson: JSON.stringify(snapshot),
        });
        const revision = await store.save(record, null, { steps: [step(1, { status: 'active', value: 'before' }), step(2, record.snapshot)] });
        expect(await store.load('flow-steps')).toEqual({ record, revision });
        // A step that is not the record's (a store is given what the host gives; another caller may differ).
        const other = flowRecord('flow-steps', { steps: 5, seq: 3, state: 'verifying' });
        const next = await store.save(other, revision, { steps: [step(4, { status: 'active', value: 'elsewhere' })] });
        expect(await store.load('flow-steps')).toEqual({ record: other, revision: next });
      });

      it('saves at the revision it loaded, each save a higher revision', async () => {
        let revision = await store.save(flowRecord('flow-b'), null);
        for (let i = 1; i <= 4; i++) {
          const next = await store.save(flowRecord('flow-b', { state: `step${i}` }), revision);
          expect(next).toBeGreaterThan(revision);
          revision = next;
        }
        expect(await store.load('flow-b')).toEqual({ record: flowRecord('flow-b', { state: 'step4' }), revision });
      });

      it('rejects a save at a stale revision with SNAPSHOT_CONFLICT and leaves the stored record untouched', async () => {
        const first = await store.save(flowRecord('flow-c'), null);
        const second = await store.save(flowRecord('flow-c', { state: 'mine' }), first);
        const error = await expectStoreError(store.save(flowRecord('flow-c', { state: 'stale' }), first), 'SNAPSHOT_CONFLICT');
        expect(error).toBeInstanceOf(SnapshotConflictError);
        expect(error.message).toContain('flow-c');
        expect((error as SnapshotConflictError).actualRevision).toBe(second);
        expect(await store.load('flow-c')).toEqual({ record: flowRecord('flow-c', { state: 'mine' }), revision: second });
      });

      it('rejects a create (null) when the flow exists, and an update when it does not', async () => {
        const revision = await store.save(flowRecord('flow-d'), null);
        await expectStoreError(store.save(flowRecord('flow-d', { state: 'again' }), null), 'SNAPSHOT_CONFLICT');
        expect(await store.load('flow-d')).toEqual({ record: flowRecord('flow-d'), revision });

        const missing = await expectStoreError(store.save(flowRecord('flow-none'), revision), 'SNAPSHOT_CONFLICT');
        expect((missing as SnapshotConflictError).actualRevision).toBeNull();
        expect(await store.load('flow-none')).toBeUndefined();
      });

      it('lets exactly one of two concurrent saves at the same revision win', async () => {
        const stores = [store, store];
        if (underTest.second) stores[1] = await underTest.second();
        const base = await store.save(flowRecord('flow-e'), null);
        for (const [a, b] of [
          [store, store],
          [stores[0]!, stores[1]!],
        ] as const) {
          const { revision } = (await a.load('flow-e'))!;
          const results = await Promise.allSettled([
            a.save(flowRecord('flow-e', { state: 'from-a' }), revision),
            b.save(flowRecord('flow-e', { state: 'from-b' }), revision),
          ]);
          const won = results.filter((r) => r.status === 'fulfilled');
          const lost = results.filter((r) => r.status === 'rejected');
          expect(won).toHaveLength(1);
          expect(lost).toHaveLength(1);
          expect((lost[0] as PromiseRejectedResult).reason).toBeInstanceOf(SnapshotConflictError);
          const winner = results[0]!.status === 'fulfilled' ? 'from-a' : 'from-b';
          const stored = (await b.load('flow-e'))!;
          expect(stored.record.state).toBe(winner);
          expect(stored.revision).toBe((won[0] as PromiseFulfilledResult<number>).value);
          expect(stored.revision).toBeGreaterThan(base);
        }
      });

      it('lets exactly one of two concurrent creates win', async () => {
        const other = underTest.second ? await underTest.second() : store;
        const results = await Promise.allSettled([store.save(flowRecord('flow-f'), null), other.save(flowRecord('flow-f'), null)]);
        expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(1);
        expect(results.filter((r) => r.status === 'rejected')).toHaveLength(1);
      });

      it('rejects records that are not JSON data or of the wrong shape with SNAPSHOT_INVALID, storing nothing', async () => {
        const withDate = flowRecord('flow-g', { snapshot: { context: { startedAt: new Date() } } });
        const error = await expectStoreError(store.save(withDate, null), 'SNAPSHOT_INVALID');
        expect(error.message).toContain('record.snapshot.context.startedAt is a Date');
        await expectStoreError(store.save(flowRecord('flow-g', { snapshot: { seen: new Map() } }), null), 'SNAPSHOT_INVALID');
        await expectStoreError(store.save(flowRecord('flow-g', { state: Number.NaN }), null), 'SNAPSHOT_INVALID');
        await expectStoreError(store.save(flowRecord('flow-g', { output: { run: () => 1 } }), null), 'SNAPSHOT_INVALID');
        await expectStoreError(store.save(flowRecord('flow-g', { output: [1, undefined] }), null), 'SNAPSHOT_INVALID');
        await expectStoreError(store.save({ ...flowRecord('flow-g'), status: 'paused' as 'done' }, null), 'SNAPSHOT_INVALID');
        await expectStoreError(store.save({ ...flowRecord('flow-g'), updatedAt: 'yesterday' }, null), 'SNAPSHOT_INVALID');
        const cyclic: Record<string, unknown> = {};
        cyclic.self = cyclic;
        await expectStoreError(store.save(flowRecord('flow-g', { snapshot: cyclic }), null), 'SNAPSHOT_INVALID');
        expect(await store.load('flow-g')).toBeUndefined();
        // undefined properties are fine: JSON leaves them out (XState snapshots have some).
        const revision = await store.save(flowRecord('flow-g', { snapshot: { output: undefined, error: undefined, value: 'idle' } }), null);
        expect((await store.load('flow-g'))?.revision).toBe(revision);
      });

      it('rejects flow ids that are not safe file names and KV tokens with INVALID_FLOW_ID', async () => {
        for (const flowId of ['', '../escape', 'a/b', 'a\\b', 'a.b', 'has space', '*', '>', 'x'.repeat(201)]) {
          await expectStoreError(store.save(flowRecord(flowId), null), 'INVALID_FLOW_ID');
          await expectStoreError(store.load(flowId), 'INVALID_FLOW_ID');
          await expectStoreError(store.delete(flowId), 'INVALID_FLOW_ID');
          await expectStoreError(store.moveAside(flowId, 'why'), 'INVALID_FLOW_ID');
        }
        expect(await store.list()).toEqual([]);
      });
    });

    describe('list', () => {
      it('summarizes every flow, oldest first, and filters by status', async () => {
        await store.save(flowRecord('flow-2', { status: 'done', updatedAt: '2025-01-02T00:00:00.000Z', state: 'done' }), null);
        await store.save(flowRecord('flow-1', { status: 'running', updatedAt: '2025-01-01T00:00:00.000Z', state: { a: 'b' } }), null);
        await store.save(flowRecord('flow-3', { status: 'running', updatedAt: '2025-01-03T00:00:00.000Z', pattern: 'parallel' }), null);
        await store.save(flowRecord('flow-4', { status: 'failed', updatedAt: '2025-01-04T00:00:00.000Z' }), null);

        expect(await store.list()).toEqual([
          { flowId: 'flow-1', pattern: 'feedbackLoop', status: 'running', state: { a: 'b' }, updatedAt: '2025-01-01T00:00:00.000Z' },
          { flowId: 'flow-2', pattern: 'feedbackLoop', status: 'done', state: 'done', updatedAt: '2025-01-02T00:00:00.000Z' },
          { flowId: 'flow-3', pattern: 'parallel', status: 'running', state: { generating: 'waiting' }, updatedAt: '2025-01-03T00:00:00.000Z' },
          { flowId: 'flow-4', pattern: 'feedbackLoop', status: 'failed', state: { generating: 'waiting' }, updatedAt: '2025-01-04T00:00:00.000Z' },
        ]);
        expect((await store.list({ status: 'running' })).map((s) => s.flowId)).toEqual(['flow-1', 'flow-3']);
        expect((await store.list({ status: ['done', 'failed'] })).map((s) => s.flowId)).toEqual(['flow-2', 'flow-4']);
        expect(await store.list({ status: 'cancelled' })).toEqual([]);
        expect(reported).toEqual([]);
      });

      it('is empty for an empty store', async () => {
        expect(await store.list()).toEqual([]);
      });

      it('loadAll, where a store has it, gives what load gives for each flow of the statuses asked', async () => {
        if (!store.loadAll) return;
        await store.save(flowRecord('flow-a', { status: 'running' }), null);
        const revB = await store.save(flowRecord('flow-b', { status: 'running' }), null);
        await store.save(flowRecord('flow-b', { status: 'running', state: 'later' }), revB);
        await store.save(flowRecord('flow-c', { status: 'done' }), null);
        const all = await store.loadAll({ status: 'running' });
        const expected = await Promise.all(['flow-a', 'flow-b'].map(async (id) => (await store.load(id))!));
        expect(all.sort((x, y) => x.record.flowId.localeCompare(y.record.flowId))).toEqual(expected);
        expect(await store.loadAll({ status: 'cancelled' })).toEqual([]);
      });
    });

    describe('corrupt entries', () => {
      for (const [kind, raw, reason] of [
        ['bad JSON', '{"revision": 1, "record": {"flowId": "flow-bad", "pat', /not JSON/],
        ['valid JSON of the wrong shape', '{"hello": "world"}', /wrong shape/],
        ['a JSON array', '[1, 2, 3]', /wrong shape/],
      ] as const) {
        it(`${kind}: load rejects SNAPSHOT_CORRUPT with the reason, list skips and reports it, other flows are unaffected`, async () => {
          const good = flowRecord('flow-good');
          const goodRevision = await store.save(good, null);
          await store.save(flowRecord('flow-bad'), null);
          await underTest.corrupt('flow-bad', raw);

          const error = await expectStoreError(store.load('flow-bad'), 'SNAPSHOT_CORRUPT');
          expect(error).toBeInstanceOf(CorruptSnapshotError);
          expect((error as CorruptSnapshotError).flowId).toBe('flow-bad');
          expect((error as CorruptSnapshotError).reason).toMatch(reason);
          expect(error.message).toContain('flow-bad');

          expect((await store.list()).map((s) => s.flowId)).toEqual(['flow-good']);
          expect(reported.map((e) => [e.flowId, e.code])).toEqual([['flow-bad', 'SNAPSHOT_CORRUPT']]);
          expect(reported[0]!.reason).toMatch(reason);

          expect(await store.load('flow-good')).toEqual({ record: good, revision: goodRevision });
          await store.save(flowRecord('flow-good', { state: 'on' }), goodRevision);
          expect((await store.load('flow-good'))?.record.state).toBe('on');
        });
      }

      it('a corrupt entry of a flow never created is reported the same way', async () => {
        await underTest.corrupt('flow-stray', 'not json at all');
        await expectStoreError(store.load('flow-stray'), 'SNAPSHOT_CORRUPT');
        expect(await store.list()).toEqual([]);
        expect(reported.map((e) => e.flowId)).toEqual(['flow-stray']);
      });

      it('moveAside takes it out of the way: load gives nothing, list neither shows nor reports it, the flow can start again', async () => {
        await store.save(flowRecord('flow-good'), null);
        await store.save(flowRecord('flow-bad'), null);
        await underTest.corrupt('flow-bad', '{"truncated":');
        await store.moveAside('flow-bad', 'not JSON: unexpected end');

        expect(await store.load('flow-bad')).toBeUndefined();
        expect((await store.list()).map((s) => s.flowId)).toEqual(['flow-good']);
        expect(reported).toEqual([]);
        const revision = await store.save(flowRecord('flow-bad', { state: 'fresh' }), null);
        expect((await store.load('flow-bad'))?.revision).toBe(revision);
        // Nothing to move: nothing happens.
        await store.moveAside('flow-nothing', 'why');
      });
    });

    describe('delete and prune', () => {
      it('delete removes the flow; deleting a missing one is fine; the flow can be created again', async () => {
        await store.save(flowRecord('flow-x'), null);
        await store.save(flowRecord('flow-y'), null);
        await store.delete('flow-x');
        expect(await store.load('flow-x')).toBeUndefined();
        expect((await store.list()).map((s) => s.flowId)).toEqual(['flow-y']);
        await store.delete('flow-x');
        await store.delete('flow-never');
        const revision = await store.save(flowRecord('flow-x'), null);
        expect((await store.load('flow-x'))?.revision).toBe(revision);
      });

      it('prune deletes only finished flows last updated before the date', async () => {
        const old = '2024-01-01T00:00:00.000Z';
        const recent = '2024-12-01T00:00:00.000Z';
        await store.save(flowRecord('old-done', { status: 'done', updatedAt: old }), null);
        await store.save(flowRecord('old-failed', { status: 'failed', updatedAt: old }), null);
        await store.save(flowRecord('old-cancelled', { status: 'cancelled', updatedAt: '2024-05-31T23:59:59.999+00:00' }), null);
        await store.save(flowRecord('old-running', { status: 'running', updatedAt: old }), null);
        await store.save(flowRecord('recent-done', { status: 'done', updatedAt: recent }), null);
        await store.save(flowRecord('edge-done', { status: 'done', updatedAt: '2024-06-01T00:00:00.000Z' }), null);
        await underTest.corrupt('corrupt-one', 'nope');

        const cutoff = new Date('2024-06-01T00:00:00.000Z');
        expect(await store.prune(cutoff, ['failed'])).toBe(1);
        expect(await store.load('old-failed')).toBeUndefined();
        expect(await store.prune(cutoff)).toBe(2);
        expect((await store.list()).map((s) => s.flowId)).toEqual(['old-running', 'edge-done', 'recent-done']);
        expect(await store.prune(cutoff)).toBe(0);
        // A corrupt entry is not pruned (it is for a person to look at), only reported.
        expect(reported.some((e) => e.flowId === 'corrupt-one')).toBe(true);
        await expectStoreError(store.load('corrupt-one'), 'SNAPSHOT_CORRUPT');
      });
    });
  });
}
