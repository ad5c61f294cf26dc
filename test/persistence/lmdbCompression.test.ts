import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { open } from 'lmdb';
import { afterAll, describe, expect, it } from 'vitest';
import { LmdbResultsStore } from '../../src/persistence/LmdbResultsStore.js';
import { LmdbSnapshotStore } from '../../src/persistence/LmdbSnapshotStore.js';
import { COMPRESS_FROM, LmdbStore, storageKey } from '../../src/persistence/LmdbStore.js';
import { flowRecord } from './contract.js';
import { storedResult } from './resultsFixtures.js';

// Values from COMPRESS_FROM bytes up are written compressed, smaller ones as they are (lmdb-js
// compresses from 1,000 bytes by default, and each compression is a thread-pool task queued
// from the main thread). A database written with the default still reads.

const dirs: string[] = [];
afterAll(async () => {
  await Promise.all(dirs.splice(0).map((d) => rm(d, { recursive: true, force: true })));
});
async function stateDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'microtask-lmdb-compression-'));
  dirs.push(dir);
  return dir;
}

/** lmdb-js marks a compressed value with a first byte of 250 or more (JSON text starts with `{`). */
async function rawFirstByte(dir: string, db: string, key: string): Promise<number | undefined> {
  const root = open({ path: join(dir, 'db'), compression: false, maxDbs: 16 });
  try {
    return root.openDB(db, { encoding: 'binary', useVersions: true }).getBinary(key)?.[0];
  } finally {
    await root.close();
  }
}

describe('lmdb compression', () => {
  it('reads records and results that lmdb-js compressed with its default threshold (databases of earlier versions)', async () => {
    const dir = await stateDir();
    const record = flowRecord('flow-old', { output: { text: 'x'.repeat(3000) } });
    const result = storedResult('k-old', { result: 'y'.repeat(3000) });
    // Written as earlier versions did: `compression: true`, compressing from 1,000 bytes.
    const old = open({ path: join(dir, 'db'), compression: true, maxDbs: 16 });
    await old.openDB<string, string>('flows', { useVersions: true, encoding: 'string' }).put('flow-old', JSON.stringify(record), 1);
    await old.openDB<string, string>('results', { useVersions: true, encoding: 'string' }).put(storageKey('k-old'), JSON.stringify(result), 1);
    await old.close();
    expect(await rawFirstByte(dir, 'flows', 'flow-old')).toBeGreaterThanOrEqual(250);
    expect(await rawFirstByte(dir, 'results', storageKey('k-old'))).toBeGreaterThanOrEqual(250);

    const db = await LmdbStore.open(dir);
    try {
      const store = await LmdbSnapshotStore.open(db);
      expect(await store.load('flow-old')).toEqual({ record, revision: 1 });
      const results = await LmdbResultsStore.open(db);
      expect(await results.get('k-old')).toEqual(result);
    } finally {
      await db.close();
    }
  });

  it('writes a record of a few KB as it is, and one from COMPRESS_FROM bytes compressed; both read back', async () => {
    const dir = await stateDir();
    const small = flowRecord('flow-small', { output: { text: 'x'.repeat(3000) } });
    const large = flowRecord('flow-large', { output: { text: 'z'.repeat(COMPRESS_FROM) } });
    const db = await LmdbStore.open(dir);
    const store = await LmdbSnapshotStore.open(db);
    await store.save(small, null);
    await store.save(large, null);
    await db.close();
    expect(await rawFirstByte(dir, 'flows', 'flow-small')).toBe('{'.charCodeAt(0));
    expect(await rawFirstByte(dir, 'flows', 'flow-large')).toBeGreaterThanOrEqual(250);
    const again = await LmdbStore.open(dir);
    try {
      const reopened = await LmdbSnapshotStore.open(again);
      expect((await reopened.load('flow-small'))?.record).toEqual(small);
      expect((await reopened.load('flow-large'))?.record).toEqual(large);
    } finally {
      await again.close();
    }
  });
});
