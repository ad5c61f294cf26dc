import { afterAll, expect } from 'vitest';
import { createActor, toPromise, type AnyStateMachine, type InspectionEvent, type Snapshot } from 'xstate';
import { getStateNodes } from 'xstate/graph';
import { CircuitBreaker } from '../../src/actors/CircuitBreaker.js';
import { createMicrotaskLogic, MicrotaskRunner } from '../../src/actors/microtask.js';
import { ScriptedModel, type Script } from '../../src/actors/model/ScriptedModel.js';
import { MemoryResultsStore } from '../../src/actors/ResultsStore.js';
import { answerSchemas } from '../../src/contracts/answers.js';

/** A scripted model behind the real microtask runner, and the actor logic that runs it. */
export function scripted(script: Script) {
  const model = new ScriptedModel(script);
  const results = new MemoryResultsStore();
  // No cooldown: scripts fail and recover from one call to the next on purpose.
  const runner = new MicrotaskRunner({ model, results, answers: answerSchemas, breaker: new CircuitBreaker(0) });
  return { model, results, runner, microtask: createMicrotaskLogic(runner) };
}

/**
 * Which states of a machine the tests of a file reach. Every state node comes from
 * `xstate/graph` (getStateNodes); each test run through `coverage.inspect` marks the
 * states its actors pass through, child machines included. After the file's tests, any
 * state that no test reached fails the file.
 */
export function stateCoverage(...machines: AnyStateMachine[]) {
  const visited = new Set<string>();
  const all = machines.flatMap((machine) =>
    getStateNodes(machine.root).map((node) => ({ machine, id: node.id, path: node.path.join('.') })),
  );
  const inspect = (event: InspectionEvent) => {
    // Microsteps show the transient states (eventless `always` hops) that snapshots skip.
    if (event.type !== '@xstate.snapshot' && event.type !== '@xstate.microstep') return;
    const snapshot = event.snapshot as Snapshot<unknown> & { machine?: AnyStateMachine; matches?: (v: string) => boolean };
    if (!snapshot.machine || !snapshot.matches) return;
    // A transient initial state is left in the first microstep, before any snapshot: the
    // transitions taken name it as their source.
    if (event.type === '@xstate.microstep') {
      for (const transition of event._transitions) visited.add(transition.source.id);
    }
    for (const node of all) {
      if (node.machine.id === snapshot.machine.id && snapshot.matches(node.path)) visited.add(node.id);
    }
  };
  afterAll(() => {
    const missing = all.filter((node) => !visited.has(node.id)).map((node) => node.id);
    expect(missing, 'states no test reached').toEqual([]);
  });
  return { inspect, visited };
}

/** Runs a machine to its end and returns its output. */
export async function runToEnd(
  machine: AnyStateMachine,
  input: unknown,
  inspect?: (event: InspectionEvent) => void,
): Promise<any> {
  const actor = createActor(machine, { input, ...(inspect ? { inspect } : {}) });
  actor.start();
  return toPromise(actor);
}

/**
 * Runs a machine until `pauseWhen` holds, persists its snapshot, passes it through
 * JSON, stops the actor, restores a new one from the JSON and runs it to the end.
 * Returns the restored run's output and the snapshot that was taken.
 */
export async function roundTrip(
  machine: AnyStateMachine,
  input: unknown,
  pauseWhen: (snapshot: any) => boolean,
  inspect?: (event: InspectionEvent) => void,
): Promise<{ output: any; persisted: unknown }> {
  const first = createActor(machine, { input, ...(inspect ? { inspect } : {}) });
  const persisted = await new Promise<unknown>((resolve, reject) => {
    const subscription = first.subscribe({
      next: (snapshot: any) => {
        if (pauseWhen(snapshot)) {
          subscription.unsubscribe();
          resolve(JSON.parse(JSON.stringify(first.getPersistedSnapshot())));
        } else if (snapshot.status !== 'active') reject(new Error('the flow ended before the pause point'));
      },
      error: reject,
    });
    first.start();
  });
  first.stop();
  const restored = createActor(machine, {
    snapshot: persisted as Snapshot<unknown>,
    input,
    ...(inspect ? { inspect } : {}),
  });
  restored.start();
  return { output: await toPromise(restored), persisted };
}
