import { spawn } from 'node:child_process';
import { appendFile, mkdir, mkdtemp, readdir, readFile, rm, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { legacyResultFile, LogResultsStore, ResultsStoreError, segmentName } from '../../src/persistence/LogResultsStore.js';
import { runResultsStoreContract, storedResult } from './resultsStoreContract.js';

const dirs: string[] = [];
async function tempDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'microtask-results-'));
  dirs.push(dir);
  // The store makes its directory itself: give it one that does not exist yet.
  return join(dir, 'results');
}
afterAll(async () => {
  await Promise.all(dirs.splice(0).map((d) => rm(d, { recursive: true, force: true })));
});

/** Appends a line as another writer would (raw: the result's JSON text, possibly broken). */
async function appendLine(dir: string, key: string, raw: string, segment = segmentName(new Date())) {
  await mkdir(dir, { recursive: true });
  await appendFile(join(dir, segment), `\n{"k":${JSON.stringify(key)},"r":${raw}}\n`);
}

runResultsStoreContract('LogResultsStore', async () => {
  const dir = await tempDir();
  const stores = [new LogResultsStore(dir)];
  const another = async () => {
    const store = new LogResultsStore(dir);
    stores.push(store);
    return store;
  };
  return {
    store: stores[0]!,
    second: another,
    // Not closed: a crash leaves the first instance's segment open.
    afterCrash: async () => new LogResultsStore(dir),
    corrupt: (key, raw) => appendLine(dir, key, raw),
    close: async () => {
      await Promise.all(stores.map((s) => s.close()));
    },
  };
});

/** The batches written to a segment: each starts with a newline, so after the first an empty line marks one. */
const lines = (text: string) => text.split('\n');

describe('LogResultsStore on disk', () => {
  it('appends one JSON line per put to the day’s segment, the puts in flight written and synced together', async () => {
    const dir = await tempDir();
    const store = new LogResultsStore(dir, { now: () => new Date('2026-03-04T23:59:59Z') });
    await store.put('flow/a/0', storedResult('flow/a/0'));
    const keys = Array.from({ length: 100 }, (_, i) => `flow/b/${i}`);
    await Promise.all(keys.map((k) => store.put(k, storedResult(k))));
    await store.close();
    expect(await readdir(dir)).toEqual(['results-20260304.log']);
    const text = await readFile(join(dir, 'results-20260304.log'), 'utf8');
    const records = lines(text).filter(Boolean).map((l) => JSON.parse(l) as { k: string; r: unknown });
    expect(records.map((r) => r.k)).toEqual(['flow/a/0', ...keys]);
    expect(records[0]!.r).toEqual(storedResult('flow/a/0'));
    // Group commit: the first put alone, the 100 concurrent ones in far fewer batches than puts.
    const batches = lines(text).filter((l) => l === '').length; // leading newline of each batch + the final newline
    expect(batches).toBeLessThanOrEqual(1 + 5);
    expect(text.endsWith('\n')).toBe(true);
  });

  it('starts a new segment on a new UTC day and reads all of them', async () => {
    const dir = await tempDir();
    let now = new Date('2026-03-04T23:59:59Z');
    const store = new LogResultsStore(dir, { now: () => now });
    await store.put('k/1', storedResult('k/1'));
    now = new Date('2026-03-05T00:00:01Z');
    await store.put('k/2', storedResult('k/2'));
    await store.put('k/1', storedResult('k/1', { taskType: 'later' }));
    expect((await readdir(dir)).sort()).toEqual(['results-20260304.log', 'results-20260305.log']);
    const fresh = new LogResultsStore(dir);
    expect(await fresh.get('k/1')).toEqual(storedResult('k/1', { taskType: 'later' }));
    expect(await fresh.get('k/2')).toEqual(storedResult('k/2'));
  });

  it('skips a line torn by a crash, at the end or followed by later appends, and reads every other line', async () => {
    const dir = await tempDir();
    const store = new LogResultsStore(dir);
    await store.put('k/before', storedResult('k/before'));
    const segment = join(dir, segmentName(new Date()));
    const whole = JSON.stringify({ k: 'k/torn', r: storedResult('k/torn') });
    await appendFile(segment, `\n${whole.slice(0, 60)}`); // a crash mid-write: no newline

    const reader = new LogResultsStore(dir);
    expect(await reader.get('k/torn')).toBeUndefined();
    expect(await reader.get('k/before')).toEqual(storedResult('k/before'));

    // The next writer's batch starts with a newline: the torn line stays alone and is skipped.
    const writer = new LogResultsStore(dir);
    await writer.put('k/after', storedResult('k/after'));
    expect(await reader.get('k/after')).toEqual(storedResult('k/after'));
    expect(await reader.get('k/torn')).toBeUndefined();
    expect(await new LogResultsStore(dir).get('k/after')).toEqual(storedResult('k/after'));
    await Promise.all([store.close(), writer.close()]);
  });

  it('keeps every line whole when several processes append to the same directory at once', async () => {
    const dir = await tempDir();
    const script = `
      import { LogResultsStore } from ${JSON.stringify(new URL('../../src/persistence/LogResultsStore.ts', import.meta.url).pathname)};
      import { storedResult } from ${JSON.stringify(new URL('./resultsFixtures.ts', import.meta.url).pathname)};
      const store = new LogResultsStore(process.argv[2]);
      const keys = Array.from({ length: 300 }, (_, i) => 'p' + process.argv[3] + '/' + i);
      for (let round = 0; round < 6; round++) await Promise.all(keys.slice(round * 50, round * 50 + 50).map((k) => store.put(k, storedResult(k))));
    `;
    const scriptFile = join(dir, '..', 'writer.mts');
    await writeFile(scriptFile, script);
    const run = (n: number) =>
      new Promise<number | null>((resolve) =>
        spawn(process.execPath, ['--import', 'tsx', scriptFile, dir, String(n)], { stdio: 'inherit' }).once('exit', resolve),
      );
    const reader = new LogResultsStore(dir);
    expect(await reader.get('p0/0')).toBeUndefined();
    expect(await Promise.all([run(0), run(1), run(2)])).toEqual([0, 0, 0]);
    for (const p of [0, 1, 2]) for (let i = 0; i < 300; i++) expect(await reader.get(`p${p}/${i}`)).toEqual(storedResult(`p${p}/${i}`));
    const text = await readFile(join(dir, segmentName(new Date())), 'utf8');
    for (const line of lines(text).filter(Boolean)) expect(() => JSON.parse(line)).not.toThrow();
  }, 60_000);

  it('reads a result file from before the log (FileResultsStore) on a miss, so an upgrade pays for nothing twice', async () => {
    const dir = await tempDir();
    await mkdir(dir, { recursive: true });
    await writeFile(legacyResultFile(dir, 'old/generate/0'), JSON.stringify(storedResult('old/generate/0')));
    await writeFile(legacyResultFile(dir, 'old/wrong/0'), JSON.stringify(storedResult('another/key')));
    await writeFile(legacyResultFile(dir, 'old/broken/0'), '{"success": tr');
    const store = new LogResultsStore(dir);
    expect(await store.get('old/generate/0')).toEqual(storedResult('old/generate/0'));
    expect(await store.get('old/wrong/0')).toBeUndefined();
    expect(await store.get('old/broken/0')).toBeUndefined();
    // A newer result in the log wins over the old file.
    await store.put('old/generate/0', storedResult('old/generate/0', { taskType: 'new' }));
    expect(await new LogResultsStore(dir).get('old/generate/0')).toEqual(storedResult('old/generate/0', { taskType: 'new' }));
    await store.close();
  });

  it('prune deletes the segments of days ended before the limit and older files from before the log, and keeps the rest', async () => {
    const dir = await tempDir();
    for (const day of ['20260301', '20260302', '20260303']) await appendLine(dir, `k/${day}`, JSON.stringify(storedResult(`k/${day}`)), `results-${day}.log`);
    await writeFile(legacyResultFile(dir, 'old/a'), JSON.stringify(storedResult('old/a')));
    await writeFile(legacyResultFile(dir, 'old/b'), JSON.stringify(storedResult('old/b')));
    await utimes(legacyResultFile(dir, 'old/a'), new Date('2026-03-01T12:00:00Z'), new Date('2026-03-01T12:00:00Z'));
    await writeFile(join(dir, 'notes.txt'), 'not ours');
    const store = new LogResultsStore(dir, { now: () => new Date('2026-03-03T10:00:00Z') });
    expect(await store.get('k/20260301')).toEqual(storedResult('k/20260301'));

    // The 2nd ended at 3rd 00:00, before the limit; the 3rd has not ended.
    expect(await store.prune(new Date('2026-03-03T06:00:00Z'))).toBe(3);
    expect((await readdir(dir)).sort()).toEqual([basename(legacyResultFile(dir, 'old/b')), 'notes.txt', 'results-20260303.log'].sort());
    expect(await store.get('k/20260301')).toBeUndefined();
    expect(await store.get('k/20260303')).toEqual(storedResult('k/20260303'));
    expect(await store.get('old/b')).toEqual(storedResult('old/b'));
    expect(await store.prune(new Date('2026-03-03T06:00:00Z'))).toBe(0);
    expect(await new LogResultsStore(join(dir, 'none')).prune(new Date())).toBe(0);
  });

  it('fails with a code and the directory when it cannot write or read', async () => {
    const parent = await tempDir();
    await writeFile(parent, 'a file where the directory should be');
    const store = new LogResultsStore(join(parent, 'results'));
    const write = await store.put('k/1', storedResult('k/1')).catch((e: unknown) => e);
    expect(write).toBeInstanceOf(ResultsStoreError);
    expect((write as ResultsStoreError).code).toBe('RESULTS_WRITE_FAILED');
    expect((write as ResultsStoreError).message).toContain(join(parent, 'results'));
    expect((write as ResultsStoreError).cause).toBeDefined();
    const read = await store.get('k/1').catch((e: unknown) => e);
    expect((read as ResultsStoreError).code).toBe('RESULTS_READ_FAILED');
    expect(((await store.prune(new Date()).catch((e: unknown) => e)) as ResultsStoreError).code).toBe('RESULTS_PRUNE_FAILED');
    // Once the cause is gone, the next put goes through (a failed mkdir is not remembered).
    await rm(parent);
    await store.put('k/1', storedResult('k/1'));
    expect(await new LogResultsStore(join(parent, 'results')).get('k/1')).toEqual(storedResult('k/1'));
  });
});
