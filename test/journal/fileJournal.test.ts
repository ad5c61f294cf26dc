import { appendFile, mkdtemp, rm, utimes } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { FileJournal } from '../../src/journal/FileJournal.js';
import type { JournalError } from '../../src/journal/Journal.js';
import { runJournalContract } from './contract.js';

runJournalContract('FileJournal', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'journal-'));
  const errors: JournalError[] = [];
  const onError = (e: JournalError) => errors.push(e);
  const journal = new FileJournal({ dir, onError, pollMs: 50 });
  return {
    journal,
    errors,
    second: async () => new FileJournal({ dir, onError, pollMs: 50 }),
    corrupt: (flowId, raw) => appendFile(join(dir, `${flowId}.jsonl`), `${raw}\n`),
    close: async () => {
      await journal.close();
      await rm(dir, { recursive: true, force: true });
    },
  };
});

describe('FileJournal', () => {
  it('leaves a line cut short by a crash for later, and prunes journals not written to since the retention', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'journal-'));
    const journal = new FileJournal({ dir });
    const at = new Date().toISOString();
    journal.append({ kind: 'flow', flowId: 'old-1', at, phase: 'started', pattern: 'microtask', status: 'running' });
    journal.append({ kind: 'flow', flowId: 'new-1', at, phase: 'started', pattern: 'microtask', status: 'running' });
    await journal.flush();
    await appendFile(join(dir, 'new-1.jsonl'), '{"kind":"flow","flowId":"new-1"');
    expect(await journal.read('new-1')).toHaveLength(1);
    const past = new Date(Date.now() - 10 * 3_600_000);
    await utimes(join(dir, 'old-1.jsonl'), past, past);
    expect(await journal.prune(new Date(Date.now() - 3_600_000))).toBe(1);
    expect(await journal.read('old-1')).toEqual([]);
    expect(await journal.read('new-1')).toHaveLength(1);
    await rm(dir, { recursive: true, force: true });
  });
});
