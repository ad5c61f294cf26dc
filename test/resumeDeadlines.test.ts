import { readFile } from 'node:fs/promises';
import { describe, expect, it } from 'vitest';
import { createActor, toPromise, type AnyStateMachine } from 'xstate';
import { handWrittenAnswer } from '../examples/offline/answers.js';
import { MAX_MICROTASK_TIMEOUT_MS } from '../src/contracts/microtask.js';
import { provideFlows } from '../src/flows.js';
import { resumeDeadlines } from '../src/resumeDeadlines.js';
import { scripted } from './support/flows.js';

/**
 * Issue 11: a flow stopped by a store outage and resumed an hour later found its
 * microtask's deadline passed and fell back without a call. A microtask's clock runs only
 * while a process runs its flow: on resume it gets the time it had left when saved.
 */

const feedbackInput = JSON.parse(await readFile(new URL('../examples/feedback-loop.json', import.meta.url), 'utf8')) as Record<string, any>;
const T = Date.parse('2030-01-01T00:00:00Z');
const HOUR = 3_600_000;

/** A persisted promise actor (a microtask) as XState 5 saves it under its parent's `children`. */
const microtaskChild = (input: Record<string, unknown>, status = 'active') => ({
  snapshot: { status, input: { taskType: 'summarize', key: 'f/generate/0', system: '', prompt: 'p', ...input } },
  src: 'microtask',
  syncSnapshot: false,
});
const machineSnapshot = (children: Record<string, any>) => ({ status: 'active', value: 'running', historyValue: {}, context: { n: 1 }, children });
const deadlineOf = (snapshot: any, ...path: string[]) => {
  let actor = snapshot;
  for (const id of path) actor = actor.children[id].snapshot;
  return actor.input.deadlineAt as number;
};

describe('resumeDeadlines', () => {
  it('gives a running microtask the time it had left when its snapshot was saved', () => {
    const saved = machineSnapshot({ m: microtaskChild({ timeoutMs: 30_000, deadlineAt: T + 20_000 }) });
    const moved = resumeDeadlines(saved, T, T + HOUR);
    expect(deadlineOf(moved, 'm')).toBe(T + HOUR + 20_000);
    // Nothing else changes.
    expect({ ...moved, children: {} }).toEqual({ ...saved, children: {} });
    expect((moved as any).children.m.snapshot.input).toEqual({ ...saved.children.m.snapshot.input, deadlineAt: T + HOUR + 20_000 });
  });

  it('moves microtasks at any depth (a tool build: flow → child machine → microtasks)', () => {
    const saved = machineSnapshot({
      analysis: { snapshot: machineSnapshot({ a: microtaskChild({ deadlineAt: T + 5_000 }), b: microtaskChild({ deadlineAt: T + 7_000 }) }), src: 'parallel' },
      'module-x': { snapshot: machineSnapshot({ gen: { snapshot: machineSnapshot({ g: microtaskChild({ deadlineAt: T + 1_000 }) }), src: 'feedbackLoop' } }), src: 'feedbackLoop' },
    });
    const moved = resumeDeadlines(saved, T, T + HOUR, { defaultTimeoutMs: 30_000 });
    expect(deadlineOf(moved, 'analysis', 'a')).toBe(T + HOUR + 5_000);
    expect(deadlineOf(moved, 'analysis', 'b')).toBe(T + HOUR + 7_000);
    expect(deadlineOf(moved, 'module-x', 'gen', 'g')).toBe(T + HOUR + 1_000);
  });

  it('never gives more than the full timeout (its own, else the default, else 10 minutes)', () => {
    // A saved time earlier than the microtask's start (another clock, a touched record).
    const saved = machineSnapshot({
      own: microtaskChild({ timeoutMs: 2_000, deadlineAt: T + 50_000 }),
      byDefault: microtaskChild({ deadlineAt: T + 50_000 }),
    });
    const moved = resumeDeadlines(saved, T, T + HOUR, { defaultTimeoutMs: 30_000 });
    expect(deadlineOf(moved, 'own')).toBe(T + HOUR + 2_000);
    expect(deadlineOf(moved, 'byDefault')).toBe(T + HOUR + 30_000);
    const far = machineSnapshot({ m: microtaskChild({ deadlineAt: T + 10 * HOUR }) });
    expect(deadlineOf(resumeDeadlines(far, T, T + HOUR), 'm')).toBe(T + HOUR + MAX_MICROTASK_TIMEOUT_MS);
  });

  it('leaves a deadline that had passed when saved passed, by as much', () => {
    const saved = machineSnapshot({ m: microtaskChild({ deadlineAt: T - 1_000 }) });
    expect(deadlineOf(resumeDeadlines(saved, T, T + HOUR), 'm')).toBe(T + HOUR - 1_000);
  });

  it('leaves finished actors, machines and snapshots without deadlines alone, and changes nothing it was given', () => {
    const done = microtaskChild({ deadlineAt: T + 1_000 }, 'done');
    const untouched = { snapshot: machineSnapshot({}), src: 'feedbackLoop' };
    const running = microtaskChild({ deadlineAt: T + 1_000 });
    const saved = machineSnapshot({ done, untouched, running });
    const copy = structuredClone(saved);
    const moved = resumeDeadlines(saved, T, T + HOUR) as any;
    expect(saved).toEqual(copy);
    expect(moved.children.done).toBe(done);
    expect(moved.children.untouched).toBe(untouched);
    expect(moved.children.running).not.toBe(running);
    // Nothing to move: the very same snapshot.
    const idle = machineSnapshot({ done, untouched });
    expect(resumeDeadlines(idle, T, T + HOUR)).toBe(idle);
    expect(resumeDeadlines(null, T, T + HOUR)).toBe(null);
    // A record without a readable save time: as it was (the deadline kept, as before).
    expect(resumeDeadlines(saved, Number.NaN, T + HOUR)).toBe(saved);
  });
});

describe('resumeDeadlines on real XState snapshots', () => {
  const slow = (ms: number) => (request: Parameters<typeof handWrittenAnswer>[0]) => {
    const answer = handWrittenAnswer(request);
    return typeof answer === 'string' ? { text: answer, delayMs: ms } : { ...(answer as { value: unknown }), delayMs: ms };
  };
  const machineOf = (microtask: ReturnType<typeof scripted>['microtask']) => provideFlows({ microtask }).catalog.machineOf('feedback-loop') as AnyStateMachine;
  // The generate call may take 800 ms; it is saved 100 ms in.
  const input = { ...feedbackInput, key: 'flow-1', task: { ...feedbackInput.task, timeoutMs: 800 }, verify: { ...feedbackInput.verify, timeoutMs: 800 } };

  async function savedMidCall() {
    const first = scripted(slow(300));
    const actor = createActor(machineOf(first.microtask), { input }).start();
    await new Promise((r) => setTimeout(r, 100));
    const savedAt = Date.now();
    const persisted = JSON.parse(JSON.stringify(actor.getPersistedSnapshot())) as Record<string, any>;
    actor.stop();
    expect(Object.values(persisted.children as Record<string, any>).map((c) => c.snapshot.input?.deadlineAt)).toEqual([expect.any(Number)]);
    // Stopped for longer than the whole timeout: as a flow whose disk was full for an hour.
    await new Promise((r) => setTimeout(r, 1_000));
    return { persisted, savedAt };
  }

  it('a microtask restored after its deadline calls the model and the flow ends as an uninterrupted one', async () => {
    const uninterrupted = scripted(slow(0));
    const expected = await toPromise(createActor(machineOf(uninterrupted.microtask), { input }).start());

    const { persisted, savedAt } = await savedMidCall();
    const resumed = scripted(slow(0));
    const restored = createActor(machineOf(resumed.microtask), { snapshot: resumeDeadlines(persisted, savedAt, Date.now()) as never, input }).start();
    const output = (await toPromise(restored)) as Record<string, any>;
    expect(resumed.model.calls.length).toBe(uninterrupted.model.calls.length);
    expect(output.best).toEqual((expected as Record<string, any>).best);
    expect(output.status).toBe('done');
    expect(JSON.stringify(output.history)).not.toContain('timeout');
  });

  it('without it, the same restore falls back without a call (the bug)', async () => {
    const { persisted } = await savedMidCall();
    const resumed = scripted(slow(0));
    const output = (await toPromise(createActor(machineOf(resumed.microtask), { snapshot: persisted as never, input }).start())) as Record<string, any>;
    // The first generate timed out at once, without its call: a fallback took its place.
    expect(JSON.stringify(output.history[0])).toContain('timeout');
  });
});
