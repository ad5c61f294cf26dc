import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { createActor, toPromise, type AnyStateMachine, type InspectionEvent } from 'xstate';
import { createMicrotaskLogic } from './actors/microtask.js';
import { provideFlows } from './flows.js';
import { machineFor, type PatternName } from './patterns.js';
import type { Runtime } from './runtime.js';

export const newFlowId = (pattern: string) => `${pattern}-${Date.now().toString(36)}-${randomBytes(4).toString('hex')}`;

/** Where built tools go when no --out is given. */
export const toolsDir = (stateDir: string) => join(stateDir, 'tools');

export interface RunFlowOptions {
  flowId?: string;
  /** For the tool builder: where to write the tool. */
  outRoot?: string;
  inspect?: (event: InspectionEvent) => void;
}

/**
 * Runs one pattern to its end in this process (embedded mode) and returns its output.
 * The input has been checked against the pattern's schema; its `key` defaults to the flow id.
 */
export async function runFlow(runtime: Runtime, pattern: PatternName, input: Record<string, unknown>, options: RunFlowOptions = {}) {
  const flowId = options.flowId ?? newFlowId(pattern);
  const flows = provideFlows({ microtask: createMicrotaskLogic(runtime.runner) });
  const machine = machineFor(flows, pattern);
  const flowInput = {
    ...input,
    key: (input.key as string | undefined) ?? flowId,
    ...(pattern === 'tool-builder' ? { outRoot: options.outRoot ?? toolsDir(runtime.config.MICROTASK_STATE_DIR) } : {}),
  };
  const log = runtime.logger.child({ flowId, pattern });
  log.info('flow started');
  // Each pattern's machine has its own input type; the schema check at the edge vouched for it.
  const actor = createActor(machine as AnyStateMachine, { input: flowInput, ...(options.inspect ? { inspect: options.inspect } : {}) });
  actor.start();
  const output = (await toPromise(actor)) as Record<string, unknown> & { status: string };
  log.info({ status: output.status, usage: output.usage }, 'flow finished');
  return { flowId, output };
}
