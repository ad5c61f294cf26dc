import type { AnyActorLogic } from 'xstate';
import { FlowCatalog, type FlowDefinition, type FlowsModule } from './flowCatalog.js';
import { builtinFlows } from './patterns/index.js';
import { answerSchemas } from './contracts/answers.js';
import type { AnswerSchemas, Fallbacks } from './actors/microtask.js';
import type { MicrotaskInput, MicrotaskResult } from './contracts/microtask.js';
import { codeOnlyRepairLogic, createWriteToolLogic, toolCheckLogic } from './actors/toolBuilderActors.js';
import type { PromiseActorLogic } from 'xstate';
import { createWaitTimerLogic } from './actors/waitTimer.js';
import { createTaskLogic, taskFailure, TaskRunner, type Tasks } from './actors/task.js';
import type { ResultsStore } from './actors/ResultsStore.js';
import type { TaskInput } from './contracts/task.js';
import type { Logger } from './log.js';
import { fromPromise } from 'xstate';

/**
 * The actors the machines name, given for real. Whether `microtask` runs the model here
 * (createMicrotaskLogic) or sends the task to a worker over the bus is decided by what
 * is passed in, never by the machines.
 */
export interface FlowActors {
  microtask: PromiseActorLogic<MicrotaskResult, MicrotaskInput>;
  /** The deterministic check; the tool builder's (type-check, --help) by default. */
  check?: AnyActorLogic;
  /** Level 0 of progressive specialization; code-only repair of a candidate by default. */
  codeOnly?: AnyActorLogic;
  /** Writes a built tool; into the output root, safely, by default. */
  writeTool?: AnyActorLogic;
  /**
   * Runs the module's tasks (createTaskLogic here, createRemoteTaskLogic on workers). None
   * given: a task a flow runs fails with `unknown_task`, saying no task runs in this process.
   */
  task?: PromiseActorLogic<MicrotaskResult, TaskInput>;
}

/**
 * The user's module this process serves (`--flows`, MICROTASK_FLOWS), set once at start by
 * the CLI. Process-wide on purpose: `run`, `resume`, `send`, `inspect`, the daemon and the
 * worker each build a catalog or a runner in several places, and every one of them must know
 * the same flows, answer schemas and fallbacks, or a flow started by one would be unknown to
 * another. A program embedding the library passes its flows to provideFlows instead.
 */
let processModule: FlowsModule = { flows: [] };

/** Makes the module's flows, answer schemas and fallbacks this process's (the CLI, after loading it). */
export function useFlowsModule(module: FlowsModule): void {
  processModule = module;
}

/** The module this process serves (none: no flows, answers or fallbacks of a user). */
export const flowsModuleInUse = (): FlowsModule => processModule;

/** The flows this process knows, by name: the built-in patterns and the module's. */
export const flowDefinition = (name: string, module: FlowsModule = processModule): FlowDefinition | undefined =>
  [...builtinFlows(), ...module.flows].find((flow) => flow.name === name);

/**
 * A registry looked up by a name any client chooses (a microtask's `answer`, its `taskType`):
 * no prototype, so `__proto__`, `constructor` or `toString` name nothing instead of
 * Object.prototype's members (`__proto__` as a fallback threw, and crashed a daemon).
 */
const byName = <T>(...sources: Array<Readonly<Record<string, T>> | undefined>): Record<string, T> =>
  Object.assign(Object.create(null) as Record<string, T>, ...sources);

/** The answer schemas a runner knows: the built-in ones and the module's. */
export const answersWith = (module: FlowsModule = processModule): AnswerSchemas => byName(answerSchemas, module.answers);

/** The fallbacks a runner knows: the module's (the built-in task types have the default one). */
export const fallbacksWith = (module: FlowsModule = processModule): Fallbacks => byName(module.fallbacks);

/** The tasks a runner knows: the module's (there are no built-in ones). */
export const tasksWith = (module: FlowsModule = processModule): Tasks => ({ ...module.tasks });

/**
 * The task actor of a process that runs tasks itself (embedded: `run`, `resume`, an
 * embedded daemon): the module's tasks, their results kept in `results`, the store the
 * microtasks' results are kept in.
 */
export function embeddedTaskLogic(options: { results: ResultsStore; logger?: Logger; defaultTimeoutMs?: number; tasks?: Tasks }) {
  const { tasks = tasksWith(), ...rest } = options;
  return createTaskLogic(new TaskRunner({ tasks, ...rest }));
}

/** What a flow's task gets where no task runner was provided: a failure that says so, for the machine to handle. */
const noTaskRunner = fromPromise<MicrotaskResult, TaskInput>(async ({ input }) =>
  taskFailure(
    input ?? {},
    { kind: 'unknown_task', message: `no task runs in this process (task ${JSON.stringify(input?.task)}): provideFlows was given no task actor`, retryable: false },
    0,
  ),
);

/**
 * The catalog of flows this runtime starts, hosts and resumes: the built-in patterns
 * (src/patterns/) and the user's (those of the module in use unless given), each machine
 * given these actors.
 */
export function provideFlows(actors: FlowActors, userFlows: readonly FlowDefinition[] = processModule.flows) {
  const blocks = {
    microtask: actors.microtask,
    task: actors.task ?? noTaskRunner,
    check: actors.check ?? toolCheckLogic,
    codeOnly: actors.codeOnly ?? codeOnlyRepairLogic,
    writeTool: actors.writeTool ?? createWriteToolLogic(),
    waitTimer: createWaitTimerLogic(),
  };
  return { catalog: new FlowCatalog([...builtinFlows(), ...userFlows], blocks) };
}
export type Flows = ReturnType<typeof provideFlows>;
