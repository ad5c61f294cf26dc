import { mkdtemp, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import type { FlowEvent } from '../src/contracts/flowEvents.js';
import { FlowHost } from '../src/flowHost.js';
import { provideFlows } from '../src/flows.js';
import { silentLogger } from '../src/log.js';
import { FileSnapshotStore } from '../src/persistence/FileSnapshotStore.js';
import type { SnapshotStore } from '../src/persistence/SnapshotStore.js';
import { scripted } from './support/flows.js';

/**
 * bench part 3 (10,000 flows resumed over NATS KV) went from 3.3 s to 9.5 s: starting a
 * restored actor reports its root with 'xstate.init', which the host took for a root
 * transition (a new seq, a save to move the record's seq, an announcement) on every
 * resumed flow, on top of the lease claim and the re-announcement of the last seq.
 */
const feedbackInput = JSON.parse(await readFile(new URL('../examples/feedback-loop.json', import.meta.url), 'utf8')) as Record<string, unknown>;
const input = { ...feedbackInput, task: { ...(feedbackInput.task as object), timeoutMs: 600_000 } };
const deadlines = (snapshot: unknown): number[] =>
  JSON.stringify(snapshot)
    .match(/"deadlineAt":\d+/g)!
    .map((m) => Number(m.split(':')[1]));

describe('resuming a waiting flow', () => {
  it('with leases: one save (the claim, holding the moved deadlines) and one announcement (the last seq again), no new seq', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'resume-cost-'));
    const files = await FileSnapshotStore.open(join(dir, 'flows'));
    let saves = 0;
    const counted: SnapshotStore = {
      save: (record, expected) => {
        saves++;
        return files.save(record, expected);
      },
      load: (flowId) => files.load(flowId),
      list: (filter) => files.list(filter),
      delete: (flowId) => files.delete(flowId),
      moveAside: (flowId, reason) => files.moveAside(flowId, reason),
      prune: (olderThan, statuses) => files.prune(olderThan, statuses),
    };
    // A model that takes ten minutes: the flow waits on its first call.
    const runtime = scripted(() => ({ text: 'never', delayMs: 600_000 }));
    const events: FlowEvent[] = [];
    const hostOn = () =>
      new FlowHost({
        flows: provideFlows({ microtask: runtime.microtask }),
        store: counted,
        logger: silentLogger,
        outRoot: dir,
        lease: { owner: 'daemon-1', durationMs: 60_000 },
        onEvent: async (event) => void events.push(event),
      });
    const first = hostOn();
    const flowId = await first.start('feedback-loop', input);
    let quietSince = saves;
    do {
      quietSince = saves;
      await new Promise((r) => setTimeout(r, 300));
    } while (saves !== quietSince);
    const before = (await files.load(flowId))!.record;
    expect(deadlines(before.snapshot).length).toBeGreaterThan(0);
    // Abandoned as a killed process is; the restarted daemon keeps its id.
    await new Promise((r) => setTimeout(r, 50));
    saves = 0;
    events.length = 0;
    const second = hostOn();
    expect(await second.resume(flowId)).toBe('resumed');
    await new Promise((r) => setTimeout(r, 500));
    expect(saves).toBe(1);
    expect(events.map((e) => e.seq)).toEqual([before.seq]);
    const after = (await files.load(flowId))!.record;
    expect(after.seq).toBe(before.seq);
    expect(after.steps).toBe(before.steps);
    // The claim holds each microtask's time left as of the resume: a second crash does not eat it.
    expect(deadlines(after.snapshot)[0]).toBeGreaterThan(deadlines(before.snapshot)[0]!);
    expect(deadlines(after.snapshot)[0]! - Date.parse(after.updatedAt)).toBeLessThanOrEqual(600_000);
    await second.stop();
  }, 30_000);
});
