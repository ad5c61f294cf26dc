import { execFile } from 'node:child_process';
import { mkdtemp, readdir, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { createMicrotaskLogic, MicrotaskRunner } from '../src/actors/microtask.js';
import { CassetteReplayModel, loadCassette } from '../src/actors/model/CassetteModel.js';
import { FlowHost } from '../src/flowHost.js';
import { provideFlows } from '../src/flows.js';
import { FileJournal } from '../src/journal/FileJournal.js';
import { silentLogger } from '../src/log.js';
import { answerSchemas } from '../src/contracts/answers.js';
import { FileSnapshotStore } from '../src/persistence/FileSnapshotStore.js';
import { LogResultsStore } from '../src/persistence/LogResultsStore.js';
import { OFFLINE_CASSETTE } from '../src/runtime.js';

// Issue 12: embedded state moved to one lmdb database under MICROTASK_STATE_DIR. A state
// directory written by an earlier version (flows/*.json, results logs, journal/*.jsonl:
// the File* stores) is still read: its unfinished flow is listed, shown and resumed.
const CLI = new URL('../dist/cli.js', import.meta.url).pathname;
const cwd = new URL('..', import.meta.url).pathname;
const cli = (args: string[], env: Record<string, string>) =>
  promisify(execFile)(process.execPath, [CLI, ...args], { env: { PATH: process.env.PATH ?? '', NO_COLOR: '1', ...env }, cwd }).then(
    ({ stdout, stderr }) => ({ code: 0, stdout, stderr }),
    (e: { code: number; stdout: string; stderr: string }) => ({ code: e.code, stdout: e.stdout, stderr: e.stderr }),
  );

describe('a state directory of an earlier version', () => {
  it('lists, shows and resumes its unfinished flow, its journal files read before the new entries', async () => {
    const state = await mkdtemp(join(tmpdir(), 'legacy-state-'));
    // The earlier embedded stores, as that version's CLI laid them out.
    const store = await FileSnapshotStore.open(join(state, 'flows'));
    const journal = new FileJournal({ dir: join(state, 'journal') });
    const results = new LogResultsStore(join(state, 'results'));
    const model = new CassetteReplayModel(await loadCassette(OFFLINE_CASSETTE), OFFLINE_CASSETTE);
    const runner = new MicrotaskRunner({ model, results, answers: answerSchemas, logger: silentLogger });
    const host = new FlowHost({ flows: provideFlows({ microtask: createMicrotaskLogic(runner) }), store, journal, logger: silentLogger, outRoot: join(state, 'tools') });
    const input = JSON.parse(await readFile(join(cwd, 'examples/feedback-loop.json'), 'utf8')) as Record<string, unknown>;
    const flowId = await host.start('feedback-loop', input);
    // Stopped once a microtask's result is stored (results log written): unfinished.
    for (let i = 0; i < 200 && !(await readdir(join(state, 'results')).catch(() => [])).length; i++) await new Promise((r) => setTimeout(r, 10));
    await host.stop();
    await journal.close();
    const before = (await store.load(flowId))!;
    expect(before.record.status).toBe('running');
    const env = { MICROTASK_STATE_DIR: state };

    const listed = await cli(['flows', '--json'], env);
    expect(listed.code, listed.stderr).toBe(0);
    expect(JSON.parse(listed.stdout)).toMatchObject([{ flowId, status: 'running' }]);
    const shown = await cli(['show', flowId, '--json'], env);
    expect(shown.code, shown.stderr).toBe(0);
    const oldEntries = JSON.parse(shown.stdout).entries as Array<{ kind: string; phase?: string }>;
    expect(oldEntries[0]).toMatchObject({ kind: 'flow', phase: 'started' });

    const resumed = await cli(['resume', flowId, '--json', '--no-progress'], env);
    expect(resumed.code, resumed.stderr).toBe(0);
    expect(JSON.parse(resumed.stdout)).toMatchObject({ flowId, status: 'done' });
    const after = JSON.parse((await cli(['show', flowId, '--json'], env)).stdout) as { record: { status: string }; entries: Array<{ kind: string; phase?: string }> };
    expect(after.record.status).toBe('done');
    // The earlier journal first, then this version's: resumed, …, ended.
    expect(after.entries.slice(0, oldEntries.length)).toEqual(oldEntries);
    const phases = after.entries.filter((e) => e.kind === 'flow').map((e) => e.phase);
    expect(phases).toEqual(['started', 'resumed', 'ended']);
    // Resumed from the earlier version's last step: its steps numbered on from there.
    const steps = after.entries.flatMap((e) => (e.kind === 'step' ? [(e as unknown as { step: number }).step] : []));
    expect(steps.at(-1)).toBeGreaterThan(before.record.steps ?? 0);
    expect(steps).toEqual(Array.from({ length: steps.length }, (_, i) => steps[0]! + i));
  }, 60_000);
});
