import type { AnyActorLogic, AnyStateMachine } from 'xstate';
import type { z } from 'zod';
import type { AnswerSchemas, Fallbacks } from './actors/microtask.js';
import type { Tasks } from './actors/task.js';

/**
 * A flow anyone can start by name, over the bus (`microtask.flow.start.<name>`), from the
 * CLI or the library: the built-in patterns are defined so (src/patterns/), and so are a
 * user's own (`microtask daemon --flows ./my-flows.js`). The host runs each the same way:
 * durably, every transition saved, resumed after a crash, shown in the inspector.
 */
export interface FlowDefinition<I extends Record<string, unknown> = Record<string, unknown>> {
  /** The name a flow is started by: letters, digits and dashes (a subject token). */
  name: string;
  /**
   * Saved with every snapshot. Bump it when a change to the machine (its states, context or
   * input) makes older snapshots unsafe to resume: those flows are then marked failed with
   * INCOMPATIBLE_SNAPSHOT instead of resumed wrongly.
   */
  version: number;
  /** What a start's input is checked against at the edge (zod); `key` defaults to the flow id. */
  input: z.ZodType<I>;
  /**
   * The XState v5 machine, given the building blocks of this runtime: the microtask actor,
   * the deterministic check, the wait timer and each built-in pattern's machine (to invoke
   * as a child), all provided.
   */
  machine(blocks: FlowBlocks): AnyStateMachine;
  /** What the runner adds to the input (never a client): the tool builder's output root. */
  prepare?(input: I, runner: { outRoot: string }): Record<string, unknown>;
  /** The part of a finished flow's output a person wants on stdout (`microtask run`); `output.result` when absent. */
  result?(output: Record<string, unknown>): unknown;
}

/**
 * What a flow's machine may invoke, provided for this runtime (src/flows.ts): give them to
 * the machine with `machine.provide({ actors: { microtask: blocks.microtask, ... } })`.
 */
export interface FlowBlocks {
  /** The microtask actor: a model call with a timeout, a fallback and a structured answer (here or on a worker). */
  microtask: AnyActorLogic;
  /**
   * The task actor: one of the module's `tasks` run by name, here or on a worker. Input
   * `{ task: 'normalize', key, input }`, the key derived from the flow's (`<flow key>/normalize`); output a
   * microtask's envelope (`success`, `result` or `error: { kind, message }`). Its result is
   * stored under `key`: a resumed flow gets it back without running the task again.
   */
  task: AnyActorLogic;
  /** The deterministic check of the tool builder's patterns. */
  check: AnyActorLogic;
  codeOnly: AnyActorLogic;
  writeTool: AnyActorLogic;
  /** The wait timer of a state that waits for a person (src/machines/waits.ts). */
  waitTimer: AnyActorLogic;
  /**
   * The machine of each flow defined before this one, its actors provided, to invoke as a
   * child, by its name in camelCase: the built-in patterns (feedbackLoop, parallel,
   * reentrant, ...) and a module's earlier flows.
   */
  patterns: Record<string, AnyStateMachine>;
}

/**
 * What a user's module gives the daemon, the workers and the CLI (`--flows ./flows.js`,
 * or MICROTASK_FLOWS): its flows, the answer schemas and fallbacks its microtasks name, and
 * its tasks.
 * A microtask's input is JSON (it is saved and sent to workers), so it refers to an answer
 * schema by name (`answer: 'triage'`) and its fallback by its `taskType`.
 */
export interface FlowsModule {
  flows: readonly FlowDefinition[];
  /** Zod schemas by name, beside the built-in ones (code, verdict, review, ...): a worker validates the model's answer with it. */
  answers?: AnswerSchemas;
  /** A degraded answer by task type, for a microtask whose model call failed. */
  fallbacks?: Fallbacks;
  /** The module's own steps by name (defineTask), run by FlowBlocks.task in the daemon or on workers. */
  tasks?: Tasks;
}

/** Types a definition where it is written: `export default defineFlow({ ... })` (its name kept as a literal type). */
export const defineFlow = <const N extends string, I extends Record<string, unknown>>(definition: FlowDefinition<I> & { name: N }): FlowDefinition<I> & { name: N } =>
  definition;

/** A flow's name as its machine is found among the blocks' patterns: `feedback-loop` → `feedbackLoop`. */
export const childName = (name: string) => name.replace(/-([a-z0-9])/g, (_, c: string) => c.toUpperCase());

const NAME = /^[a-z][a-z0-9-]{0,62}$/;

/** Why a flow definition was refused: a code to switch on, one line to act on. */
export class FlowDefinitionError extends Error {
  override readonly name = 'FlowDefinitionError';
  readonly code = 'INVALID_FLOW_DEFINITION';
}

/** The flows a runtime can start, by name, with their machines provided. */
export class FlowCatalog {
  private readonly byName = new Map<string, { definition: FlowDefinition; machine: AnyStateMachine }>();

  /** Builds each flow's machine in order: one may invoke those before it as children (blocks.patterns). */
  constructor(definitions: readonly FlowDefinition[], actors: Omit<FlowBlocks, 'patterns'>) {
    const blocks: FlowBlocks = { ...actors, patterns: {} };
    for (const definition of definitions) {
      const where = `flow ${JSON.stringify(definition?.name)}`;
      if (typeof definition?.name !== 'string' || !NAME.test(definition.name)) {
        throw new FlowDefinitionError(`${where}: a name is lowercase letters, digits and dashes, starting with a letter`);
      }
      if (this.byName.has(definition.name)) throw new FlowDefinitionError(`${where} is defined twice (a built-in pattern's name is taken)`);
      if (!Number.isInteger(definition.version) || definition.version < 1) throw new FlowDefinitionError(`${where}: version must be a whole number from 1`);
      if (typeof definition.input?.safeParse !== 'function') throw new FlowDefinitionError(`${where}: input must be a zod schema`);
      if (typeof definition.machine !== 'function') throw new FlowDefinitionError(`${where}: machine must be a function of the building blocks that returns an XState machine`);
      const machine = definition.machine(blocks);
      if (!machine || typeof (machine as { provide?: unknown }).provide !== 'function') {
        throw new FlowDefinitionError(`${where}: machine(blocks) must return an XState v5 machine (createMachine or setup().createMachine)`);
      }
      this.byName.set(definition.name, { definition, machine });
      blocks.patterns[childName(definition.name)] = machine;
    }
  }

  has(name: string): boolean {
    return this.byName.has(name);
  }

  names(): string[] {
    return [...this.byName.keys()];
  }

  definition(name: string): FlowDefinition | undefined {
    return this.byName.get(name)?.definition;
  }

  machine(name: string): AnyStateMachine | undefined {
    return this.byName.get(name)?.machine;
  }

  /** The machine that runs a flow of this catalog; an error naming the known ones for any other name. */
  machineOf(name: string): AnyStateMachine {
    const machine = this.machine(name);
    if (!machine) throw new Error(`no flow "${name}" in this runtime; one of: ${this.names().join(', ')}`);
    return machine;
  }

  version(name: string): number | undefined {
    return this.byName.get(name)?.definition.version;
  }
}
