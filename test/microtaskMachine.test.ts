import { describe, expect, it } from 'vitest';
import { createActor, toPromise } from 'xstate';
import { ModelError } from '../src/actors/model/ModelError.js';
import { microtaskMachine } from '../src/machines/microtaskMachine.js';
import { roundTrip, runToEnd, scripted, stateCoverage } from './support/flows.js';

const coverage = stateCoverage(microtaskMachine);
const input = { taskType: 'summarize', key: 'm/1', system: 's', prompt: 'p', timeoutMs: 5_000 };

describe('the microtask machine', () => {
  it('runs to done with the answer', async () => {
    const { microtask } = scripted(['an answer']);
    const output = await runToEnd(microtaskMachine.provide({ actors: { microtask } }), input, coverage.inspect);
    expect(output).toMatchObject({ status: 'done', result: 'an answer', timedOut: false, usage: { calls: 1 } });
  });

  it('times out and gives the fallback', async () => {
    const { microtask } = scripted([{ text: 'late', delayMs: 3_000 }]);
    const output = await runToEnd(microtaskMachine.provide({ actors: { microtask } }), { ...input, timeoutMs: 200 }, coverage.inspect);
    expect(output).toMatchObject({ status: 'failed', timedOut: true, result: { fallback: true } });
    expect(output.reason).toMatch(/^timeout: /);
  });

  it('fails with the fallback on any other error', async () => {
    const { microtask } = scripted([new ModelError('refused', 'no')]);
    const output = await runToEnd(microtaskMachine.provide({ actors: { microtask } }), input, coverage.inspect);
    expect(output).toMatchObject({ status: 'failed', timedOut: false, envelope: { error: { kind: 'refused' } } });
  });

  it('fails clearly when the microtask actor was not provided', async () => {
    const output = await runToEnd(microtaskMachine, input, coverage.inspect);
    expect(output.status).toBe('failed');
    expect(output.reason).toContain('was not provided');
  });

  it('keeps the deadline of a microtask across a restore: the timeout goes on, not from zero', async () => {
    const { microtask } = scripted(() => ({ text: 'too late', delayMs: 10_000 }));
    const machine = microtaskMachine.provide({ actors: { microtask } });
    const first = createActor(machine, { input: { ...input, timeoutMs: 3_000 }, inspect: coverage.inspect }).start();
    await new Promise((r) => setTimeout(r, 2_000));
    const persisted = JSON.parse(JSON.stringify(first.getPersistedSnapshot()));
    first.stop();
    const restoredAt = performance.now();
    const restored = createActor(machine, { snapshot: persisted, input, inspect: coverage.inspect }).start();
    const output = await toPromise(restored);
    expect(output).toMatchObject({ status: 'failed', timedOut: true });
    // About 1 s was left of the 3 s; starting over would take 3 s.
    expect(performance.now() - restoredAt).toBeLessThan(2_500);
  });

  it('survives a JSON round trip of its snapshot mid-call and finishes with the same output', async () => {
    const { microtask, model } = scripted(() => ({ text: 'same', delayMs: 50 }));
    const machine = microtaskMachine.provide({ actors: { microtask } });
    const { output } = await roundTrip(machine, input, (s) => s.matches('running'), coverage.inspect);
    expect(output).toMatchObject({ status: 'done', result: 'same' });
    // The call in flight when the snapshot was taken ran again from its saved input.
    expect(model.calls.length).toBeGreaterThanOrEqual(1);
  });
});
