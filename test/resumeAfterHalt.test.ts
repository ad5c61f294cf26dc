import { mkdir, mkdtemp, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadConfig } from '../src/config.js';
import { FlowHaltedError } from '../src/flowHost.js';
import { silentLogger } from '../src/log.js';
import { answerSchemas } from '../src/contracts/answers.js';
import { resumeFlow, runFlow } from '../src/runFlow.js';
import { createRuntime } from '../src/runtime.js';
import { startFakeAnthropic } from '../src/testing/fakeAnthropic.js';
import { smallDisk } from './support/fullDisk.js';
import { handWrittenReplies } from './support/handWrittenModel.js';

/**
 * Issue 11: a flow stopped by a full disk and resumed later found its microtask's deadline
 * passed (the deadline is kept across a restore) and fell back without trying: the call
 * was lost to a fallback. A microtask's clock must not run while no process runs its flow.
 *
 * End to end, embedded as `microtask run` / `resume` run it: the real SDK against a local
 * fake server, the state directory on a real small tmpfs. Passes once FlowHost's resume
 * applies src/resumeDeadlines.ts to the snapshot it restores.
 */

const feedbackInput = JSON.parse(await readFile(new URL('../examples/feedback-loop.json', import.meta.url), 'utf8')) as Record<string, any>;
const TIMEOUT_MS = 3_000;

const runtimeFor = (stateDir: string, modelUrl: string) =>
  createRuntime(
    loadConfig({
      MICROTASK_STATE_DIR: stateDir,
      ANTHROPIC_API_KEY: 'sk-test',
      ANTHROPIC_BASE_URL: modelUrl,
      MICROTASK_MAX_RETRIES: '0',
      MICROTASK_TIMEOUT_MS: String(TIMEOUT_MS),
    }),
    silentLogger,
    { answers: answerSchemas },
  );

async function until<T>(check: () => Promise<T | undefined>, what: string, timeoutMs = 15_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** The deadlines of the microtasks in flight in a persisted snapshot, at any depth. */
function deadlinesIn(snapshot: unknown): number[] {
  const children = (snapshot as { children?: Record<string, { snapshot?: { status?: string; input?: { deadlineAt?: unknown } } }> } | null)?.children ?? {};
  return Object.values(children).flatMap((child) => [
    ...(child.snapshot?.status === 'active' && typeof child.snapshot.input?.deadlineAt === 'number' ? [child.snapshot.input.deadlineAt] : []),
    ...deadlinesIn(child.snapshot),
  ]);
}

describe('a flow halted by a full disk, resumed after its microtask deadline', { timeout: 90_000 }, () => {
  it('calls the model for the microtask that was in flight and ends with the uninterrupted output', async () => {
    // Until the flow halts no call answers in time (the generate in flight when the disk
    // fills, any started after it): nothing is paid, stored or kept in memory for them, so
    // the resumed run has to call again.
    let halted = false;
    await using model = await startFakeAnthropic({ replies: (request) => handWrittenReplies(halted ? 0 : 10_000)(request) });
    await using reference = await startFakeAnthropic({ replies: handWrittenReplies(0) });
    await using referenceRuntime = await runtimeFor(await mkdtemp(join(tmpdir(), 'halt-ref-')), reference.url);
    const uninterrupted = await runFlow(referenceRuntime, 'feedback-loop', feedbackInput);
    expect(uninterrupted.output.status).toBe('done');

    await using disk = await smallDisk();
    const state = join(disk.dir, 'state');
    await mkdir(state);
    const first = await runtimeFor(state, model.url);
    let flowId: string | undefined;
    const running = runFlow(first, 'feedback-loop', feedbackInput, { onStarted: (id) => (flowId = id) }).then(
      () => undefined,
      (e: unknown) => e,
    );
    const saved = await until(async () => {
      const record = flowId ? (await first.store.load(flowId))?.record : undefined;
      return record && deadlinesIn(record.snapshot).length > 0 ? record : undefined;
    }, 'a saved step with the call in flight');
    await until(async () => (model.requests.length > 0 ? true : undefined), 'the call to start');
    await disk.fill();
    const halt = await running;
    halted = true;
    expect(halt).toBeInstanceOf(FlowHaltedError);
    expect((halt as FlowHaltedError).message).toMatch(new RegExp(`^ENOSPC: no space left on ${join(state, 'db')}`));
    const onDisk = (await first.store.load(flowId!))!.record;
    expect(onDisk.status).toBe('running');
    const [deadlineAt] = deadlinesIn(onDisk.snapshot);
    expect(deadlineAt).toBeGreaterThan(Date.parse(onDisk.updatedAt));
    expect(onDisk.steps).toBeGreaterThanOrEqual(saved.steps!);
    // Stopped longer than the whole timeout, as a disk full for an hour.
    await new Promise((r) => setTimeout(r, Math.max(0, deadlineAt! - Date.now()) + 500));

    await disk.free();
    const callsBefore = model.requests.length;
    const second = await runtimeFor(state, model.url);
    const resumed = await resumeFlow(second, flowId!);
    await second.close();
    // No call more or fewer than the uninterrupted run's (a fallback's revision asks the same).
    expect(model.requests.slice(callsBefore).map((r) => r.body.messages)).toEqual(reference.requests.map((r) => r.body.messages));
    // The generate that was in flight got its call, not a fallback at once.
    expect(JSON.stringify(resumed.output)).not.toContain('timeout');
    expect(resumed.output.history).toEqual(uninterrupted.output.history);
    expect(resumed.record.status).toBe('done');
    expect(resumed.output.best).toEqual(uninterrupted.output.best);
    expect(resumed.output.status).toBe(uninterrupted.output.status);
  });
});
