import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { createTaskLogic, TaskRunner } from '../src/actors/task.js';
import { FlowHost } from '../src/flowHost.js';
import { provideFlows } from '../src/flows.js';
import { LmdbJournal } from '../src/journal/LmdbJournal.js';
import { silentLogger } from '../src/log.js';
import { LmdbResultsStore } from '../src/persistence/LmdbResultsStore.js';
import { LmdbSnapshotStore } from '../src/persistence/LmdbSnapshotStore.js';
import { LmdbStore } from '../src/persistence/LmdbStore.js';
import { scripted } from './support/flows.js';
import { countingTasks, enrichFlow } from './support/taskFlows.js';

// The host sees a flow's tasks as it sees its microtasks: each is journaled (its start with
// its input, its end with its result), and a cancel withdraws one in flight.

async function hostWith(runs: string[], gate?: Promise<void>) {
  const dir = await mkdtemp(join(tmpdir(), 'task-journal-'));
  const db = await LmdbStore.open(dir);
  const store = await LmdbSnapshotStore.open(db);
  const results = await LmdbResultsStore.open(db);
  const journal = await LmdbJournal.open(dir);
  const cancelled: string[][] = [];
  const { microtask } = scripted(['unused']);
  const host = new FlowHost({
    flows: provideFlows({ microtask, task: createTaskLogic(new TaskRunner({ tasks: countingTasks(runs, gate), results, logger: silentLogger })) }, [enrichFlow]),
    store,
    journal,
    logger: silentLogger,
    outRoot: dir,
    onCancel: async (_flowId, keys) => void cancelled.push(keys),
  });
  return { host, journal, cancelled };
}

describe('tasks in the flow host', () => {
  it('journals each task: its start with its input, its end with its result', async () => {
    const { host, journal } = await hostWith([]);
    const flowId = await host.start('enrich', { text: '  Hello ' });
    expect((await host.finished(flowId))!.status).toBe('done');
    await journal.flush?.();
    const tasks = (await journal.read(flowId)).filter((e) => e.kind === 'microtask');
    expect(tasks.map((e) => [e.kind === 'microtask' && e.taskType, e.kind === 'microtask' && e.phase])).toEqual([
      ['normalize', 'started'],
      ['normalize', 'finished'],
      ['score', 'started'],
      ['score', 'finished'],
    ]);
    const [normalizeStart, normalizeEnd] = tasks as Array<Extract<(typeof tasks)[number], { kind: 'microtask' }>>;
    expect(normalizeStart!.data).toEqual({ text: '  Hello ' });
    expect(normalizeStart!.prompt).toBeUndefined();
    expect(normalizeEnd!.result).toMatchObject({ success: true, result: 'hello' });
  });

  it('a cancel withdraws the task in flight (its key), as a microtask', async () => {
    let open!: () => void;
    const gate = new Promise<void>((resolve) => (open = resolve));
    const runs: string[] = [];
    const { host, cancelled } = await hostWith(runs, gate);
    const flowId = await host.start('enrich', { text: 'x', key: 'k1' });
    while (!runs.includes('score')) await new Promise((r) => setTimeout(r, 10));
    expect(await host.cancel(flowId)).toBe(true);
    open();
    expect(cancelled).toEqual([['k1/score']]);
  });
});
