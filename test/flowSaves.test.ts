import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import type { FlowEvent } from '../src/daemon/protocol.js';
import { FlowHost } from '../src/flowHost.js';
import { provideFlows } from '../src/flows.js';
import { silentLogger } from '../src/log.js';
import { LmdbSnapshotStore } from '../src/persistence/LmdbSnapshotStore.js';
import { LmdbStore } from '../src/persistence/LmdbStore.js';
import type { FlowSnapshotRecord, SaveOptions } from '../src/persistence/SnapshotStore.js';
import { scripted } from './support/flows.js';

// A flow's start is announced (seq 1) once its first step is durable, saved with that step:
// before, the root's report of its start came after the first save and cost a save of its
// own (the same snapshot, seq 0 -> 1), one more write and fsync per flow.

describe('saves per flow', () => {
  it('a flow of one microtask is two saves (its first step with seq 1, its end); seqs 1..N announced, each once durable', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'saves-'));
    const db = await LmdbStore.open(dir);
    const store = await LmdbSnapshotStore.open(db);
    const saves: Array<{ seq: number | undefined; steps: number[]; status: string }> = [];
    const save = store.save.bind(store);
    store.save = (record: FlowSnapshotRecord, expected: number | null, options?: SaveOptions) => {
      saves.push({ seq: record.seq, steps: (options?.steps ?? []).map((s) => s.step), status: record.status });
      return save(record, expected, options);
    };
    const events: FlowEvent[] = [];
    const durable: boolean[] = [];
    const runtime = scripted(() => ({ text: 'ok' }));
    const host = new FlowHost({
      flows: provideFlows({ microtask: runtime.microtask }),
      store,
      logger: silentLogger,
      outRoot: dir,
      onEvent: async (event) => {
        events.push(event);
        durable.push(((await store.load(event.flowId))?.record.seq ?? -1) >= event.seq);
      },
    });
    try {
      const flowId = await host.start('microtask', { taskType: 'echo', system: 'Answer ok.', prompt: 'Say ok.' });
      const record = await host.finished(flowId)!;
      expect(record.output, JSON.stringify(record.error ?? record.output)).toMatchObject({ status: 'done' });
      expect(saves).toEqual([
        { seq: 1, steps: [1], status: 'running' },
        { seq: 2, steps: [2], status: 'done' },
      ]);
      expect(events.map((e) => [e.seq, e.status])).toEqual([
        [1, 'running'],
        [2, 'done'],
      ]);
      expect(durable).toEqual([true, true]);
      expect((await store.readSteps(flowId)).map((s) => s.step)).toEqual([1, 2]);
    } finally {
      await host.stop?.();
      await db.close();
    }
  });
});
