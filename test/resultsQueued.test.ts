import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { MicrotaskRunner, type MicrotaskDeps } from '../src/actors/microtask.js';
import { ScriptedModel } from '../src/actors/model/ScriptedModel.js';
import type { ResultsStore } from '../src/actors/ResultsStore.js';
import { openEmbeddedState } from '../src/composition.js';
import { loadConfig } from '../src/config.js';
import type { MicrotaskResult } from '../src/contracts/microtask.js';
import { silentLogger } from '../src/log.js';
import { LmdbStore } from '../src/persistence/LmdbStore.js';
import { flowRecord } from './persistence/contract.js';

/**
 * Embedded, results and snapshots are one lmdb database whose writes commit in the order
 * made: the runner queues a paid answer's write and lets the flow go on (its next save,
 * made after, lands no earlier). Elsewhere it waits for the write, as before.
 */

/** A results store whose writes reach "disk" (what `get` sees) only when released, or fail. */
class HeldResults implements ResultsStore {
  readonly location = 'held';
  readonly onDisk = new Map<string, MicrotaskResult>();
  readonly writes: Array<{ key: string; via: 'put' | 'queue'; release(): void; fail(e: Error): void }> = [];
  constructor(private readonly canQueue = true) {}

  async get(key: string) {
    return this.onDisk.get(key);
  }

  put(key: string, result: MicrotaskResult): Promise<void> {
    return this.hold(key, result, 'put');
  }

  queue(key: string, result: MicrotaskResult): Promise<void> | undefined {
    return this.canQueue ? this.hold(key, result, 'queue') : undefined;
  }

  private hold(key: string, result: MicrotaskResult, via: 'put' | 'queue') {
    return new Promise<void>((resolve, reject) => {
      this.writes.push({
        key,
        via,
        release: () => {
          this.onDisk.set(key, result);
          resolve();
        },
        fail: reject,
      });
    });
  }
}

const task = { taskType: 'summarize', key: 'flow-q/summarize/0', system: 'Summarize.', prompt: 'Summarize the data.', data: 'some text' };

function runner(results: ResultsStore, extra: Partial<MicrotaskDeps> = {}) {
  const model = new ScriptedModel(() => ({ text: 'a summary', usage: { inputTokens: 10, outputTokens: 3 } }));
  return { model, runner: new MicrotaskRunner({ model, results, resultsOrderedBeforeSaves: true, ...extra }) };
}

/** Whether `promise` settles within `ms`. */
const settlesWithin = (promise: Promise<unknown>, ms: number) =>
  Promise.race([promise.then(() => true, () => true), new Promise<boolean>((resolve) => setTimeout(() => resolve(false), ms))]);

describe('a paid answer whose store orders its writes before the flow saves', () => {
  it('is returned once its write is queued, before it is on disk; a run of its key meanwhile gets it without a second call', async () => {
    const results = new HeldResults();
    const { model, runner: r } = runner(results);
    const first = r.run(task);
    expect(await settlesWithin(first, 1_000)).toBe(true);
    expect((await first).success).toBe(true);
    expect(results.writes.map((w) => w.via)).toEqual(['queue']);
    expect(results.onDisk.size).toBe(0);
    // The store reads only what is on disk: the answer comes from the write on its way.
    const again = await r.run(task);
    expect(again).toMatchObject({ success: true, cached: true, result: (await first).result });
    expect(model.calls).toHaveLength(1);
    results.writes[0]!.release();
    expect(results.onDisk.get(task.key)?.success).toBe(true);
  });

  it('whose write fails is kept in memory: the next run of its key gets it without a second call and stores it', async () => {
    const results = new HeldResults();
    const { model, runner: r } = runner(results);
    const first = await r.run(task);
    results.writes[0]!.fail(new Error('ENOSPC: no space left on device'));
    await new Promise((resolve) => setTimeout(resolve, 10));
    expect(r.unsavedCount).toBe(1);
    const again = r.run(task);
    // Stored again, by `put` this time, and returned once that write is on disk.
    await new Promise((resolve) => setTimeout(resolve, 10));
    expect(results.writes.map((w) => w.via)).toEqual(['queue', 'put']);
    results.writes[1]!.release();
    expect(await again).toMatchObject({ success: true, cached: true, result: first.result });
    expect(model.calls).toHaveLength(1);
    expect(r.unsavedCount).toBe(0);
  });

  it('is waited for where the store cannot queue it now, and where the writes are not ordered before the saves', async () => {
    for (const [results, extra] of [
      [new HeldResults(false), {}],
      [new HeldResults(), { resultsOrderedBeforeSaves: false }],
    ] as const) {
      const { runner: r } = runner(results, extra);
      const run = r.run(task);
      expect(await settlesWithin(run, 300)).toBe(false);
      expect(results.writes.map((w) => w.via)).toEqual(['put']);
      results.writes[0]!.release();
      expect((await run).success).toBe(true);
    }
  });
});

describe('the embedded state (one lmdb database)', () => {
  const dirs: string[] = [];
  afterAll(async () => {
    await LmdbStore.closeAll();
    await Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true })));
  });

  it('says its results are ordered before its saves, and its results store queues a write that is on disk once it resolves', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'results-queued-'));
    dirs.push(dir);
    const state = await openEmbeddedState(loadConfig({ MICROTASK_STATE_DIR: dir }), silentLogger);
    expect(state.resultsOrderedBeforeSaves).toBe(true);
    const queued: string[] = [];
    const results: ResultsStore = {
      get: (key) => state.results.get(key),
      put: (key, value) => state.results.put(key, value),
      queue: (key, value) => {
        const written = state.results.queue(key, value);
        if (written) queued.push(key);
        return written;
      },
    };
    const { runner: r, model } = runner(results, { resultsOrderedBeforeSaves: state.resultsOrderedBeforeSaves });
    // A write goes without a space check only after one found room: the first is a put.
    await r.run({ ...task, key: 'warm/up/0' });
    expect(queued).toEqual([]);
    const result = await r.run(task);
    expect(result.success).toBe(true);
    expect(queued).toEqual([task.key]);
    // The flow's next save, made after: once it is on disk, so is the answer (not awaited here).
    await state.store.save(flowRecord('flow-q'), null);
    expect((await state.results.get(task.key))?.result).toEqual(result.result);
    await state.close();
    // Another process's view: what is on disk.
    const reopened = await openEmbeddedState(loadConfig({ MICROTASK_STATE_DIR: dir }), silentLogger);
    expect((await reopened.results.get(task.key))?.result).toEqual(result.result);
    await reopened.close();
    expect(model.calls).toHaveLength(2);
  });
});
