import { mkdtemp, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { handWrittenAnswer } from '../examples/offline/answers.js';
import { progressDisplay } from '../src/cli/liveProgress.js';
import { FlowHost } from '../src/flowHost.js';
import { provideFlows } from '../src/flows.js';
import { actorLabel, childLabel, eventLabel } from '../src/inspector/page/actorLabel.js';
import { FileJournal } from '../src/journal/FileJournal.js';
import type { JournalEntry } from '../src/journal/Journal.js';
import { silentLogger } from '../src/log.js';
import { FileSnapshotStore } from '../src/persistence/FileSnapshotStore.js';
import type { ToolSpec } from '../src/contracts/toolSpec.js';
import { runCli } from './support/cliProcess.js';
import { scripted } from './support/flows.js';

/**
 * Issue 16, item 4: names a person knows. Progress said `feedbackLoop
 * 0.toolBuilder.generatingModule: verifying`, and every module's loop had that one id, so
 * the journal (and the inspector's child view, which filters by it) put all the modules'
 * microtasks under one actor.
 */

const spec: ToolSpec = JSON.parse(await readFile(new URL('../examples/api-tester.json', import.meta.url), 'utf8'));
const moduleNames = spec.modules.map((m) => m.name);

type Step = Extract<JournalEntry, { kind: 'step' }>;
type Microtask = Extract<JournalEntry, { kind: 'microtask' }>;

async function setup() {
  const dir = await mkdtemp(join(tmpdir(), 'labels-'));
  const store = await FileSnapshotStore.open(join(dir, 'flows'));
  const journal = new FileJournal({ dir: join(dir, 'journal') });
  const runtime = scripted((request) => handWrittenAnswer(request));
  const host = () => new FlowHost({ flows: provideFlows({ microtask: runtime.microtask }), store, journal, logger: silentLogger, outRoot: dir });
  return { store, journal, host };
}

/** What the progress display prints for these entries, on a pipe (a line per change). */
function progressLines(entries: readonly JournalEntry[]): string[] {
  let text = '';
  const stream = { isTTY: false, write: (chunk: string) => ((text += chunk), true) } as unknown as NodeJS.WriteStream;
  const progress = progressDisplay({ stream, live: false, color: false });
  for (const entry of entries) progress.onEntry(entry);
  progress.done();
  return text.split('\n').map((line) => line.trim());
}

/** The top-level child of the flow a microtask ran under (`module:auth` of `module:auth/0.feedbackLoop.generating`). */
const topChild = (entry: Microtask) => entry.actor.split('/')[0]!;

describe('labels of a flow\'s actors', () => {
  it('reads child ids as a person knows them, the same for progress and the inspector', () => {
    expect(childLabel('module:auth')).toBe('module auth');
    expect(childLabel('module:auth:improve')).toBe('module auth (improving)');
    expect(childLabel('task-2')).toBe('task 2');
    expect(childLabel('0.feedbackLoop.generating')).toBe('generating');
    expect(childLabel('integration')).toBe('integration');
    expect(actorLabel('root', 'toolBuilder')).toBe('toolBuilder');
    expect(actorLabel('module:auth/0.feedbackLoop.verifying')).toBe('module auth › verifying');
    expect(eventLabel('xstate.done.actor.module:auth')).toBe('done: module auth');
    expect(eventLabel('xstate.done.actor.0.feedbackLoop.generating')).toBe('done: generating');
    expect(eventLabel('xstate.init')).toBe('xstate.init');
  });

  it(`a tool build of ${moduleNames.length} modules: progress says "module <name>: <state>", and each module's microtasks are journaled under that module's own actor only`, async () => {
    const s = await setup();
    const host = s.host();
    const flowId = await host.start('tool-builder', { spec });
    expect((await host.finished(flowId))!.status).toBe('done');
    await s.journal.flush();
    const entries = await s.journal.read(flowId);

    const lines = progressLines(entries);
    for (const name of moduleNames) {
      for (const state of ['generating', 'checking', 'verifying', 'done']) expect(lines).toContain(`module ${name}: ${state}`);
    }
    expect(lines).toContain('analysis: waiting');
    expect(lines).toContain('integration: reviewing');
    expect(lines).toContain('toolBuilder: generatingModule');
    expect(lines.filter((line) => /feedbackLoop|0\.toolBuilder/.test(line))).toEqual([]);

    // Each module's loop is an actor of its own, and only that module's microtasks are under it.
    const microtasks = entries.filter((e): e is Microtask => e.kind === 'microtask' && e.phase === 'started');
    const byChild = new Map<string, Microtask[]>();
    for (const entry of microtasks) byChild.set(topChild(entry), [...(byChild.get(topChild(entry)) ?? []), entry]);
    expect([...byChild.keys()].sort()).toEqual(['analysis', 'integration', ...moduleNames.map((name) => `module:${name}`)].sort());
    for (const name of moduleNames) {
      const keys = byChild.get(`module:${name}`)!.map((e) => e.key.slice(flowId.length));
      expect(keys).toEqual([`/module/${name}/generate/0`, `/module/${name}/verify/0`]);
    }
    const transitions = entries.filter((e) => e.kind === 'transition' && e.machine === 'feedbackLoop').map((e) => (e as { actor: string }).actor);
    expect(new Set(transitions)).toEqual(new Set(moduleNames.map((name) => `module:${name}`)));
    await host.stop();
  }, 60_000);

  it('a tool build resumed in the middle of its second module finishes as one that never stopped; that module\'s microtasks stay under its actor', async () => {
    const s = await setup();
    const first = s.host();
    const flowId = await first.start('tool-builder', { spec });
    const expected = (await first.finished(flowId))!;
    await s.journal.flush();
    await first.stop();
    const second = moduleNames[1]!;
    const childOf = (step: Step) => (step.snapshot as { children?: Record<string, { src: string; snapshot: { value?: unknown } }> }).children?.[`module:${second}`];
    // A step where the second module's loop waits for its verdict.
    const mid = (await s.journal.read(flowId)).find((e): e is Step => e.kind === 'step' && childOf(e)?.snapshot.value === 'verifying');
    expect(mid, `a step with module:${second} verifying`).toBeDefined();
    expect(childOf(mid!)!.src).toBe('feedbackLoop');

    const stored = (await s.store.load(flowId))!;
    const copy = `${flowId}-resumed`;
    await s.store.save({ ...stored.record, flowId: copy, status: 'running', snapshot: mid!.snapshot as object, state: mid!.rootState as string, output: undefined }, null);
    const host = s.host();
    expect(await host.resume(copy)).toBe('resumed');
    const record = (await host.finished(copy))!;
    expect(record.status).toBe('done');
    const output = record.output as { modules: unknown; files: string[] };
    expect(output.modules).toEqual((expected.output as { modules: unknown }).modules);
    expect(output.files).toEqual((expected.output as { files: string[] }).files);

    await s.journal.flush();
    const resumed = (await s.journal.read(copy)).filter((e): e is Microtask => e.kind === 'microtask' && e.phase === 'started');
    // The verdict asked again after the resume (its stored result answers it), under its module.
    const verify = resumed.find((e) => e.key.endsWith(`/module/${second}/verify/0`));
    expect(verify?.actor).toBe(`module:${second}/0.feedbackLoop.verifying`);
    for (const e of resumed.filter((entry) => entry.key.includes('/module/'))) {
      expect(topChild(e), e.key).toBe(`module:${/\/module\/([^/]+)\//.exec(e.key)![1]}`);
    }
    await host.stop();
  }, 60_000);

  it('a tool build saved before the children had these ids is refused on resume (INCOMPATIBLE_SNAPSHOT), not left waiting for a done event no state takes', async () => {
    const s = await setup();
    const first = s.host();
    const flowId = await first.start('tool-builder', { spec });
    await first.finished(flowId);
    await s.journal.flush();
    await first.stop();
    const second = `module:${moduleNames[1]}`;
    const mid = (await s.journal.read(flowId)).find((e): e is Step => e.kind === 'step' && second in ((e.snapshot as { children?: object }).children ?? {}));
    expect(mid).toBeDefined();
    // As version 1 saved it: the module's loop under the id XState gave its invoke.
    const snapshot = mid!.snapshot as { children: Record<string, unknown> };
    const { [second]: loop, ...others } = snapshot.children;
    const legacy = { ...snapshot, children: { ...others, '0.toolBuilder.generatingModule': loop } };
    const stored = (await s.store.load(flowId))!;
    const copy = `${flowId}-v1`;
    await s.store.save({ ...stored.record, flowId: copy, machineVersion: 1, status: 'running', snapshot: legacy, state: mid!.rootState as string, output: undefined }, null);
    const host = s.host();
    await expect(host.resume(copy)).rejects.toMatchObject({ code: 'INCOMPATIBLE_SNAPSHOT' });
    expect((await s.store.load(copy))!.record).toMatchObject({ status: 'failed', error: { code: 'INCOMPATIBLE_SNAPSHOT' } });
    await host.stop();
  }, 60_000);

  it('`microtask build` prints each module\'s progress by its name (the built CLI, offline)', async () => {
    const out = await mkdtemp(join(tmpdir(), 'labels-build-'));
    const built = await runCli(['build', 'examples/api-tester.json', '--out', out], { MICROTASK_STATE_DIR: await mkdtemp(join(tmpdir(), 'labels-state-')) });
    expect(built.code, built.stderr).toBe(0);
    const lines = built.stderr.split('\n').map((line) => line.trim());
    for (const name of moduleNames) expect(lines).toContain(`module ${name}: verifying`);
    expect(lines).toContain('integration: reviewing');
    expect(built.stderr).not.toMatch(/0\.toolBuilder|feedbackLoop /);
  }, 90_000);
});
