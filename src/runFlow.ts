import { join } from 'node:path';
import type { InspectionEvent } from 'xstate';
import { createMicrotaskLogic } from './actors/microtask.js';
import { FlowHaltedError, FlowHost } from './flowHost.js';
import { embeddedTaskLogic, provideFlows, type Flows } from './flows.js';
import type { FlowDone, FlowEvent } from './contracts/flowEvents.js';
import type { FlowSnapshotRecord } from './persistence/SnapshotStore.js';
import type { Runtime } from './runtime.js';
import type { Journal } from './journal/Journal.js';
import type { FlowWait } from './flowWaits.js';

export { newFlowId } from './flowHost.js';

/** Where built tools go when no --out is given. */
export const toolsDir = (stateDir: string) => join(stateDir, 'tools');

/** Where embedded mode keeps what must survive a crash, under MICROTASK_STATE_DIR. */
export const stateDirs = (stateDir: string) => ({
  flows: join(stateDir, 'flows'),
  results: join(stateDir, 'results'),
  tools: toolsDir(stateDir),
  journal: join(stateDir, 'journal'),
});

export interface RunFlowOptions {
  flowId?: string;
  /** For the tool builder: where to write the tool. */
  outRoot?: string;
  inspect?: (event: InspectionEvent) => void;
  /** Instead of the runtime's journal (a tee for live progress). */
  journal?: Journal;
  /** Told the flow's id once its first snapshot is saved. */
  onStarted?: (flowId: string) => void;
  /** Told when the flow starts waiting for a person or an event, and for what. */
  onWaiting?: (flowId: string, waits: FlowWait[]) => void;
}

export type FlowOutput = Record<string, unknown> & { status: string };

/** The runtime's flows (the built-ins and its user's), their microtasks run by its runner and their tasks (the module's) in this process, both results in its store. */
export const flowsOf = (runtime: Runtime): Flows =>
  provideFlows(
    {
      microtask: createMicrotaskLogic(runtime.runner),
      task: embeddedTaskLogic({ results: runtime.results, logger: runtime.logger, defaultTimeoutMs: runtime.config.MICROTASK_TIMEOUT_MS, ...(runtime.tasks ? { tasks: runtime.tasks } : {}) }),
    },
    runtime.flows,
  );

/** What a host of several flows (the library's orchestrator) is told besides what `runFlow` is. */
export interface HostOptions extends RunFlowOptions {
  flows?: Flows;
  onEvent?: (event: FlowEvent) => Promise<void>;
  onDone?: (done: FlowDone) => Promise<void>;
}

/** The FlowHost of embedded mode on a runtime: its store, journal, inbox and microtask runner. */
export function hostFor(runtime: Runtime, options: HostOptions = {}) {
  return new FlowHost({
    flows: options.flows ?? flowsOf(runtime),
    store: runtime.store,
    logger: runtime.logger,
    outRoot: options.outRoot ?? toolsDir(runtime.config.MICROTASK_STATE_DIR),
    // Named in the line a full disk stops a flow with (`ENOSPC: no space left on <state>/db`).
    storeLocation: runtime.storeLocation,
    journal: options.journal ?? runtime.journal,
    ...(options.inspect ? { inspect: options.inspect } : {}),
    keptEvents: (flowId) => runtime.inbox.read(flowId),
    ...(options.onWaiting ? { onWaiting: options.onWaiting } : {}),
    ...(options.onEvent ? { onEvent: options.onEvent } : {}),
    ...(options.onDone ? { onDone: options.onDone } : {}),
  });
}

/**
 * While the flow runs here: the events sent to it from other processes (`microtask
 * send`, approve, reject), applied as they come.
 */
async function serveEvents(runtime: Runtime, host: FlowHost, flowId: string) {
  const following = await runtime.inbox.follow((id, event) => {
    if (id !== flowId) return;
    host.send(id, event).catch((e: unknown) => runtime.logger.warn({ flowId, eventId: event.eventId, err: e }, (e as Error).message));
  });
  // A flow that waits for a person holds no timer or socket: without this the process
  // would end there, its flow saved but no longer run.
  const keepAlive = setInterval(() => undefined, 2 ** 30);
  return async () => {
    clearInterval(keepAlive);
    await following.stop();
  };
}

function outputOf(record: FlowSnapshotRecord): FlowOutput {
  // Stopped where it stood (its store failed): nothing to report but the cause; resumable.
  if (record.status === 'running' && record.error) throw new FlowHaltedError(record.flowId, record.error.message);
  if (record.output !== undefined) return record.output as FlowOutput;
  // Cancelled or crashed: no machine output, so say what the record says.
  return { status: record.status === 'cancelled' ? 'cancelled' : 'failed', reason: record.error?.message ?? record.status, usage: undefined };
}

/**
 * Runs one pattern to its end in this process (embedded mode), durably: its snapshot is
 * saved after every transition, so `resumeFlow` carries on after a crash. The input has
 * been checked against the pattern's schema; its `key` defaults to the flow id.
 */
export async function runFlow(runtime: Runtime, pattern: string, input: Record<string, unknown>, options: RunFlowOptions = {}) {
  const host = hostFor(runtime, options);
  const flowId = await host.start(pattern, input, options.flowId ? { flowId: options.flowId } : {});
  options.onStarted?.(flowId);
  const stopServing = await serveEvents(runtime, host, flowId);
  const record = await host.finished(flowId)!.finally(stopServing);
  return { flowId, output: outputOf(record), record };
}

/** Resumes an unfinished flow from its last snapshot and runs it to its end. */
export async function resumeFlow(runtime: Runtime, flowId: string, options: RunFlowOptions = {}) {
  const host = hostFor(runtime, options);
  // Followed before the resume: an event sent meanwhile is in what it reads or comes here (applied once).
  const stopServing = await serveEvents(runtime, host, flowId);
  let record;
  let outcome;
  try {
    outcome = await host.resume(flowId);
    const waits = outcome === 'resumed' ? host.waiting(flowId) : undefined;
    if (waits?.length) options.onWaiting?.(flowId, waits);
    record = outcome === 'finished' ? (await runtime.store.load(flowId))!.record : await host.finished(flowId)!;
  } finally {
    await stopServing();
  }
  return { flowId, outcome, output: outputOf(record), record };
}

/**
 * Starts a flow and leaves it saved, not running: another process (`microtask resume`)
 * runs it. A microtask the start set off is stopped before its model call.
 */
export async function startDetached(runtime: Runtime, pattern: string, input: Record<string, unknown>, options: RunFlowOptions = {}) {
  const host = hostFor(runtime, options);
  const flowId = await host.start(pattern, input, options.flowId ? { flowId: options.flowId } : {});
  await host.stop();
  await runtime.journal.flush();
  return flowId;
}
