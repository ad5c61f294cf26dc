import { access } from 'node:fs/promises';
import { isAbsolute, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { fromPromise } from 'xstate';
import { answerSchemas } from './contracts/answers.js';
import { MAX_MICROTASK_TIMEOUT_MS } from './contracts/limits.js';
import { TASK_NAME } from './contracts/task.js';
import type { Tasks } from './actors/task.js';
import type { MicrotaskInput, MicrotaskResult } from './contracts/microtask.js';
import { FlowDefinitionError, type FlowDefinition, type FlowsModule } from './flowCatalog.js';
import { provideFlows } from './flows.js';
import { UsageError } from './UsageError.js';

export type FlowsModuleErrorCode = 'FLOWS_MODULE_NOT_FOUND' | 'FLOWS_MODULE_FAILED' | 'INVALID_FLOWS_MODULE' | 'INVALID_FLOW_DEFINITION';

/**
 * Why a user's module of flows was refused: the user's to fix, so a usage error (the CLI
 * exits 2), in one line that names the module and ends with the code to switch on.
 */
export class FlowsModuleError extends UsageError {
  constructor(specifier: string, message: string, override readonly code: FlowsModuleErrorCode) {
    super(`--flows ${specifier}: ${firstLine(message)} (${code})`, code);
  }
}

const firstLine = (text: string) => text.split('\n', 1)[0]!.trim();

const isRecord = (value: unknown): value is Record<string, unknown> =>
  typeof value === 'object' && value !== null && !Array.isArray(value);

/**
 * Loads a user's module of flows (`--flows ./flows.js`, MICROTASK_FLOWS): a path resolved
 * against `cwd`, imported as ESM (so `.js` of a `"type": "module"` package, or `.mjs`). It
 * exports `flows` (an array of defineFlow(...)), and may export `answers` (zod schemas by
 * name), `fallbacks` (functions by task type) and `tasks` (defineTask(...) by name). Everything is checked here, each flow's
 * machine built once, so a bad module stops the command at start, never a flow later.
 */
export async function loadFlowsModule(specifier: string, cwd = process.cwd()): Promise<FlowsModule> {
  const path = isAbsolute(specifier) ? specifier : resolve(cwd, specifier);
  try {
    await access(path);
  } catch {
    throw new FlowsModuleError(specifier, `no such file (looked for ${path})`, 'FLOWS_MODULE_NOT_FOUND');
  }
  let exported: Record<string, unknown>;
  try {
    exported = (await import(pathToFileURL(path).href)) as Record<string, unknown>;
  } catch (e) {
    // A syntax error, a dependency not installed next to it, a throw at its top level.
    const message = e instanceof Error ? e.message : String(e);
    const typescript = (e as { code?: string }).code === 'ERR_UNKNOWN_FILE_EXTENSION' ? ": compile it to JavaScript (tsc), or load TypeScript with NODE_OPTIONS='--import tsx'" : '';
    throw new FlowsModuleError(specifier, `importing it failed: ${firstLine(message)}${typescript}`, 'FLOWS_MODULE_FAILED');
  }
  // `export default { flows, ... }`, or a CommonJS `module.exports = { flows, ... }`, is read the same.
  const fromDefault = exported.flows === undefined && isRecord(exported.default) && Array.isArray(exported.default.flows);
  return checkFlowsModule(specifier, fromDefault ? (exported.default as Record<string, unknown>) : exported);
}

/** The module's exports as a FlowsModule, or the first thing wrong with them. */
export function checkFlowsModule(specifier: string, exported: Record<string, unknown>): FlowsModule {
  const invalid = (message: string) => new FlowsModuleError(specifier, message, 'INVALID_FLOWS_MODULE');
  const flows = exported.flows;
  if (!Array.isArray(flows)) {
    throw invalid(
      flows === undefined
        ? 'it exports no `flows`: export const flows = [defineFlow({ name, version, input, machine })]'
        : '`flows` must be an array of flow definitions (defineFlow(...))',
    );
  }
  if (flows.length === 0) throw invalid('`flows` is empty: give it at least one defineFlow(...)');

  const answers = exported.answers;
  if (answers !== undefined) {
    if (!isRecord(answers)) throw invalid('`answers` must be an object of zod schemas by name: { triage: z.object({ ... }) }');
    for (const [name, schema] of Object.entries(answers)) {
      if (typeof (schema as { safeParse?: unknown } | null)?.safeParse !== 'function') throw invalid(`answers.${name} is not a zod schema`);
      // A flow of the built-in patterns asks for these by name: the module must not change what they mean.
      if (Object.hasOwn(answerSchemas, name)) throw invalid(`answers.${name}: "${name}" is a built-in answer schema; give yours another name`);
    }
  }
  const fallbacks = exported.fallbacks;
  if (fallbacks !== undefined) {
    if (!isRecord(fallbacks)) throw invalid('`fallbacks` must be an object of functions by task type: { triage: (input, error) => ({ ... }) }');
    for (const [taskType, fallback] of Object.entries(fallbacks)) {
      if (typeof fallback !== 'function') throw invalid(`fallbacks.${taskType} must be a function (input, error) => a degraded answer`);
    }
  }
  const tasks = exported.tasks;
  if (tasks !== undefined) checkTasks(tasks, invalid);

  const module: FlowsModule = {
    flows: flows as FlowDefinition[],
    ...(answers !== undefined ? { answers: answers as FlowsModule['answers'] & object } : {}),
    ...(fallbacks !== undefined ? { fallbacks: fallbacks as FlowsModule['fallbacks'] & object } : {}),
    ...(tasks !== undefined ? { tasks: tasks as Tasks } : {}),
  };
  // Each definition checked and its machine built, as the daemon will: a wrong name, a name
  // taken, a machine(blocks) that throws or returns no machine are refused now.
  try {
    provideFlows({ microtask: noMicrotask }, module.flows);
  } catch (e) {
    if (e instanceof FlowDefinitionError) throw new FlowsModuleError(specifier, e.message, 'INVALID_FLOW_DEFINITION');
    throw new FlowsModuleError(specifier, `building a flow's machine failed: ${e instanceof Error ? e.message : String(e)}`, 'INVALID_FLOW_DEFINITION');
  }
  return module;
}

/** The module's `tasks`: by name, each an input schema, a function and perhaps a timeout. */
function checkTasks(tasks: unknown, invalid: (message: string) => FlowsModuleError): void {
  const shape = '{ normalize: defineTask({ input: z.object({ ... }), run: (input) => ({ ... }) }) }';
  if (!isRecord(tasks)) throw invalid(`\`tasks\` must be an object of tasks by name: ${shape}`);
  for (const [name, task] of Object.entries(tasks)) {
    // A name travels in jobs and logs, and a flow's snapshot names it: kept plain.
    if (!TASK_NAME.test(name)) throw invalid(`tasks[${JSON.stringify(name)}]: a task's name is letters, digits, dashes and underscores, starting with a letter`);
    if (!isRecord(task)) throw invalid(`tasks.${name} must be a task: defineTask({ input, run })`);
    if (typeof (task.input as { safeParse?: unknown } | null)?.safeParse !== 'function') throw invalid(`tasks.${name}.input is not a zod schema`);
    if (typeof task.run !== 'function') throw invalid(`tasks.${name}.run must be a function (input, context) => a JSON value (or a promise of one)`);
    const timeoutMs = task.timeoutMs;
    if (timeoutMs !== undefined && !(Number.isInteger(timeoutMs) && (timeoutMs as number) >= 1 && (timeoutMs as number) <= MAX_MICROTASK_TIMEOUT_MS)) {
      throw invalid(`tasks.${name}.timeoutMs must be a whole number of milliseconds from 1 to ${MAX_MICROTASK_TIMEOUT_MS}`);
    }
  }
}

/** For the check only: nothing runs a microtask while the machines are built. */
const noMicrotask = fromPromise<MicrotaskResult, MicrotaskInput>(() => Promise.reject(new Error('no microtask runs while a module is checked')));
