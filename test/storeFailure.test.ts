import { execFileSync } from 'node:child_process';
import { mkdir, mkdtemp, open, rename, rm, rmdir, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { createActor, toPromise } from 'xstate';
import { createMicrotaskLogic, MicrotaskRunner } from '../src/actors/microtask.js';
import { AnthropicModel } from '../src/actors/model/AnthropicModel.js';
import type { ResultsStore } from '../src/actors/ResultsStore.js';
import { LmdbResultsStore } from '../src/persistence/LmdbResultsStore.js';
import { LmdbStore } from '../src/persistence/LmdbStore.js';
import { LogResultsStore } from '../src/persistence/LogResultsStore.js';
import { isStoreUnavailable } from '../src/persistence/StoreUnavailableError.js';
import { reply, startFakeAnthropic } from '../src/testing/fakeAnthropic.js';

// Issue 11: a store failure is not a model failure. The results store sits on a real, small
// tmpfs that a filler file makes full, so its append fails with ENOSPC as a full disk does.
let mnt: string;
let filler: string;

beforeAll(async () => {
  mnt = await mkdtemp(join(tmpdir(), 'results-enospc-'));
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=512k', 'tmpfs', mnt], { stdio: 'pipe' });
  } catch (e) {
    throw new Error(
      `this test mounts a small tmpfs to fill it, which needs root (or CAP_SYS_ADMIN): run it as root, e.g. in the dev container (${(e as Error).message.split('\n')[0]})`,
    );
  }
  filler = join(mnt, 'filler');
});

afterAll(async () => {
  if (!mnt) return;
  try {
    execFileSync('umount', [mnt], { stdio: 'pipe' });
  } finally {
    await rmdir(mnt).catch(() => undefined);
  }
});

let dir: string;
let n = 0;
beforeEach(async () => {
  await rm(filler, { force: true });
  dir = join(mnt, `results-${n++}`);
  // Made before the disk fills: a full disk fails the results' appends, not their directory.
  await mkdir(dir);
});

/** Writes a file until the file system is full (ENOSPC), as a full disk is. */
async function fillDisk(): Promise<void> {
  const handle = await open(filler, 'w');
  const chunk = Buffer.alloc(4096, 1);
  try {
    for (;;) await handle.write(chunk);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOSPC') throw e;
  } finally {
    await handle.close();
  }
  await expect(writeFile(join(mnt, 'probe'), 'x')).rejects.toMatchObject({ code: 'ENOSPC' });
}
const freeDisk = () => rm(filler, { force: true });

/** Which results store the runner uses: the log of earlier versions, or the embedded database (<dir>/db). */
type Kind = 'log' | 'lmdb';
let kind: Kind = 'log';
/** A store on `dir` of the kind under test: for the runner, or another reader of the same data. */
async function storeOn(): Promise<ResultsStore> {
  return kind === 'log' ? new LogResultsStore(dir) : LmdbResultsStore.open(await LmdbStore.open(dir));
}
/** Where the store under test writes, as its messages name it. */
const where = () => (kind === 'log' ? dir : join(dir, 'db'));
afterEach(async () => {
  // Before the tmpfs goes: the databases' writes committed, their files closed.
  await LmdbStore.closeAll();
});

const task = { taskType: 'summarize', key: 'flow-enospc/summarize/0', system: 'Summarize.', prompt: 'Summarize the data.' };
const usage = { input_tokens: 11, output_tokens: 7 };

async function runnerOn(url: string, storeRetryMs: number) {
  return new MicrotaskRunner({ model: new AnthropicModel({ apiKey: 'k', baseURL: url, model: 'm', maxRetries: 0 }), results: await storeOn(), storeRetryMs });
}

for (const k of ['log', 'lmdb'] as const) {
  describe(`a results store (${k}) that fails after a paid answer (issue 11)`, () => {
    beforeEach(() => {
      kind = k;
    });

    it('keeps the answer and stores it once the full disk has space again: returned with its usage, the model called once', async () => {
      await using server = await startFakeAnthropic({ replies: () => reply.text('the summary', { usage }) });
      const runner = await runnerOn(server.url, 10_000);
      await fillDisk();
      const freed = new Promise((r) => setTimeout(r, 600)).then(freeDisk);
      const result = await runner.run({ ...task, timeoutMs: 10_000 });
      await freed;
      expect(result).toMatchObject({ success: true, result: 'the summary', cached: false, usage: { inputTokens: 11, outputTokens: 7, calls: 1 } });
      expect(server.requests).toHaveLength(1);
      // Stored on disk: another process (a fresh store on the directory) finds it.
      expect(await (await storeOn()).get(task.key)).toMatchObject({ success: true, result: 'the summary' });
    });

    it('keeps a paid failure (max_tokens) the same way: stored once there is space, its tokens counted', async () => {
      await using server = await startFakeAnthropic({ replies: () => reply.text('cut', { stopReason: 'max_tokens', usage }) });
      const runner = await runnerOn(server.url, 10_000);
      await fillDisk();
      const freed = new Promise((r) => setTimeout(r, 600)).then(freeDisk);
      const result = await runner.run({ ...task, timeoutMs: 10_000 });
      await freed;
      expect(result).toMatchObject({ success: false, error: { kind: 'max_tokens' }, usage: { inputTokens: 11, outputTokens: 7, calls: 1 } });
      expect(await (await storeOn()).get(task.key)).toMatchObject({ error: { kind: 'max_tokens' } });
      expect(server.requests).toHaveLength(1);
    });

    it('a disk that stays full stops the microtask with StoreUnavailableError naming ENOSPC and the directory (not a fallback); a run after space is freed gets the kept answer without a second call', async () => {
      await using server = await startFakeAnthropic({ replies: () => reply.text('the summary', { usage }) });
      const runner = await runnerOn(server.url, 800);
      await fillDisk();
      const actor = createActor(createMicrotaskLogic(runner), { input: { ...task, timeoutMs: 1_000 } });
      actor.start();
      const error = await toPromise(actor).then(
        (result) => ({ notRejected: result }),
        (e: unknown) => e,
      );
      expect(isStoreUnavailable(error)).toBe(true);
      const { message, code, usage: spent } = error as { message: string; code: string; usage: unknown };
      expect(code).toBe('STORE_UNAVAILABLE');
      expect(message).toContain(`ENOSPC: no space left on ${where()}`);
      expect(message).not.toContain('\n');
      // The tokens spent are on the error, for the host to count and log.
      expect(spent).toMatchObject({ inputTokens: 11, outputTokens: 7, calls: 1 });
      expect(server.requests).toHaveLength(1);

      await freeDisk();
      // A resumed flow runs the microtask again, with the same key (and its deadline long past).
      const again = await runner.run({ ...task, deadlineAt: Date.now() - 1 });
      expect(again).toMatchObject({ success: true, result: 'the summary', usage: { inputTokens: 11, outputTokens: 7, calls: 1 } });
      expect(server.requests).toHaveLength(1);
      expect(await (await storeOn()).get(task.key)).toMatchObject({ success: true, result: 'the summary' });
    });
  });

  describe(`a kept answer with no later run of its key, ${k} store (issue 11)`, () => {
    beforeEach(() => {
      kind = k;
    });

    it('is stored in the background once the disk has space, so a flow resumed by another process finds it', async () => {
      await using server = await startFakeAnthropic({ replies: () => reply.text('the summary', { usage }) });
      const runner = await runnerOn(server.url, 300);
      await fillDisk();
      await expect(runner.run({ ...task, timeoutMs: 300 })).rejects.toMatchObject({ code: 'STORE_UNAVAILABLE' });
      expect(runner.unsavedCount).toBe(1);
      await freeDisk();
      const other = await storeOn();
      const deadline = Date.now() + 10_000;
      while (!(await other.get(task.key)) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
      expect(await other.get(task.key)).toMatchObject({ success: true, result: 'the summary', usage: { inputTokens: 11, outputTokens: 7 } });
      expect(runner.unsavedCount).toBe(0);
      expect(server.requests).toHaveLength(1);
    });
  });
}

describe('a results store that fails on the lookup before the call (issue 11)', () => {
  beforeEach(() => {
    kind = 'log';
  });

  /** Makes the store's directory unreadable (a file where it was) until `restore` is called. */
  async function breakDir(): Promise<() => Promise<void>> {
    const aside = `${dir}.aside`;
    await rename(dir, aside);
    await writeFile(dir, 'not a directory');
    return async () => {
      await rm(dir);
      await rename(aside, dir);
    };
  }

  it('retries the lookup: an answer stored by another process is returned, never paid for again nor replaced by a fallback', async () => {
    await using server = await startFakeAnthropic({ replies: () => reply.text('paid again', { usage }) });
    await new LogResultsStore(dir).put(task.key, {
      success: true,
      taskType: task.taskType,
      key: task.key,
      result: 'stored before',
      durationMs: 5,
      usage: { inputTokens: 3, outputTokens: 2, cacheCreationInputTokens: 0, cacheReadInputTokens: 0, calls: 1 },
      cached: false,
    });
    const runner = await runnerOn(server.url, 5_000);
    const restore = await breakDir();
    const restored = new Promise((r) => setTimeout(r, 500)).then(restore);
    const result = await runner.run({ ...task, timeoutMs: 10_000 });
    await restored;
    expect(result).toMatchObject({ success: true, result: 'stored before', cached: true });
    expect(server.requests).toHaveLength(0);
  });

  it('a lookup that keeps failing until the deadline stops the microtask with StoreUnavailableError, without a model call', async () => {
    await using server = await startFakeAnthropic({ replies: () => reply.text('never', { usage }) });
    const runner = await runnerOn(server.url, 5_000);
    const restore = await breakDir();
    try {
      const started = Date.now();
      const error = await runner.run({ ...task, timeoutMs: 700 }).then(
        (result) => ({ notRejected: result }),
        (e: unknown) => e,
      );
      expect(isStoreUnavailable(error)).toBe(true);
      expect((error as Error).message).toMatch(/^results store unavailable: .*ENOTDIR/);
      expect(Date.now() - started).toBeGreaterThanOrEqual(600);
      expect(server.requests).toHaveLength(0);
    } finally {
      await restore();
    }
  });
});
