import { mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { handWrittenAnswer } from '../examples/offline/answers.js';
import { FlowHost } from '../src/flowHost.js';
import { provideFlows } from '../src/flows.js';
import { silentLogger } from '../src/log.js';
import { FileSnapshotStore } from '../src/persistence/FileSnapshotStore.js';
import { LmdbSnapshotStore } from '../src/persistence/LmdbSnapshotStore.js';
import { LmdbStore } from '../src/persistence/LmdbStore.js';
import type { SnapshotStore } from '../src/persistence/SnapshotStore.js';
import { isStoreUnavailable } from '../src/persistence/StoreUnavailableError.js';
import { scripted } from './support/flows.js';
import { smallDisk } from './support/fullDisk.js';

/**
 * Issue 11: with the state directory full, a flow kept running with nothing saved. A flow
 * whose save fails must stop at that step, say why in one line, and resume cleanly once
 * there is space. Against a real full file system (a small tmpfs).
 */

const feedbackInput = JSON.parse(await readFile(new URL('../examples/feedback-loop.json', import.meta.url), 'utf8')) as Record<string, unknown>;

const slowAnswers = (ms: number) => (request: Parameters<typeof handWrittenAnswer>[0]) => {
  const answer = handWrittenAnswer(request);
  return typeof answer === 'string' ? { text: answer, delayMs: ms } : { ...(answer as { value: unknown }), delayMs: ms };
};

function hostOn(store: SnapshotStore, location: string, script = slowAnswers(40)) {
  const runtime = scripted(script);
  const host = new FlowHost({ flows: provideFlows({ microtask: runtime.microtask }), store, logger: silentLogger, outRoot: location, storeLocation: location });
  return { host, runtime };
}

/**
 * The store under test on `dir`, and the directory its messages name: FileSnapshotStore
 * (`<dir>/flows`) or the embedded database (`<dir>/db`, which grows by writes: no map is
 * reserved on the disk, so it fits a small one).
 */
async function storeOn(kind: 'file' | 'lmdb', dir: string): Promise<{ store: SnapshotStore; flows: string } & AsyncDisposable> {
  if (kind === 'file') {
    const flows = join(dir, 'flows');
    await mkdir(flows);
    return { store: await FileSnapshotStore.open(flows), flows, [Symbol.asyncDispose]: async () => {} };
  }
  const db = await LmdbStore.open(dir);
  return { store: await LmdbSnapshotStore.open(db), flows: db.path, [Symbol.asyncDispose]: () => db.close() };
}

describe.each(['file', 'lmdb'] as const)('a full disk (%s store)', (kind) => {
  it('refuses to start a flow, naming ENOSPC and the directory', async () => {
    await using disk = await smallDisk();
    await using opened = await storeOn(kind, disk.dir);
    const { store, flows } = opened;
    await disk.fill();
    const { host } = hostOn(store, flows);
    const error = await host.start('feedback-loop', feedbackInput).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(isStoreUnavailable(error)).toBe(true);
    expect((error as Error).message).toBe(`ENOSPC: no space left on ${flows}`);
  });

  it('stops a running flow at the step it could not save, and it resumes to the uninterrupted output once there is space', async () => {
    await using disk = await smallDisk();
    await using opened = await storeOn(kind, disk.dir);
    const { store, flows } = opened;

    const reference = hostOn(store, flows, slowAnswers(0));
    const referenceId = await reference.host.start('feedback-loop', feedbackInput);
    const expected = (await reference.host.finished(referenceId))!;
    await store.delete(referenceId);

    const { host, runtime } = hostOn(store, flows);
    const flowId = await host.start('feedback-loop', feedbackInput);
    const before = (await store.load(flowId))!.record;
    await disk.fill();
    const stopped = (await host.finished(flowId))!;
    // Stopped, not ended: the record on disk is the last step it could save, still running.
    expect(stopped.error).toEqual({ code: 'STORE_UNAVAILABLE', message: `ENOSPC: no space left on ${flows}` });
    expect(stopped.status).toBe('running');
    const onDisk = (await store.load(flowId))!.record;
    expect(onDisk.status).toBe('running');
    expect(onDisk.steps).toBeGreaterThanOrEqual(before.steps!);
    expect(host.running(flowId)).toBeUndefined();
    // It stopped: no model call goes on after the failed save.
    const callsAtStop = runtime.model.calls.length;
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(runtime.model.calls.length).toBe(callsAtStop);

    await disk.free();
    const resumed = hostOn(store, flows, slowAnswers(0));
    expect(await resumed.host.resume(flowId)).toBe('resumed');
    const record = (await resumed.host.finished(flowId))!;
    expect(record.status).toBe('done');
    expect((record.output as { best?: unknown }).best).toEqual((expected.output as { best?: unknown }).best);
  });
});
