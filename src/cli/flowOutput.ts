import { isFlowStopCode } from '../contracts/microtask.js';
import type { Usage } from '../contracts/usage.js';
import { FlowHaltedError } from '../flowHost.js';
import { flowDefinition } from '../flows.js';
import type { SnapshotStore } from '../persistence/SnapshotStore.js';
import { isStoreUnavailable } from '../persistence/StoreUnavailableError.js';
import type { FlowOutput } from '../runFlow.js';
import { ExitCode } from './exitCodes.js';
import { unreachableCause, type FlowCalls } from './flowCalls.js';
import { describeStoreStop, formatTokens, visibleControls } from './format.js';

/**
 * A flow that fell back on cassette misses: say why, in words a new user can act on. From
 * its journal (`calls`) when the command saw it, else from its output: a flow of the
 * user's may keep only the fallbacks, and a built-in pattern's output names the error.
 * `model` is the runtime's description: a cassette of the user's (MICROTASK_CASSETTE) is
 * not the shipped one.
 */
export function offlineHint(output: Record<string, unknown>, calls?: FlowCalls, model?: string): string {
  const misses = calls?.cassetteMisses ?? 0;
  if (misses === 0 && !JSON.stringify(output).includes('cassette_miss')) return '';
  const requests = misses ? `${misses} model request${misses === 1 ? '' : 's'}` : 'model requests';
  if (model?.startsWith('replaying cassette')) {
    return `\nhint: ran offline on a cassette: ${requests} had no answer on it, so the flow ran on their fallbacks; record them with ANTHROPIC_API_KEY and MICROTASK_RECORD\n`;
  }
  return `\nhint: ran offline (no ANTHROPIC_API_KEY): ${requests} had no answer on the offline cassette, which only has answers for the examples in examples/, so the flow ran on their fallbacks; set ANTHROPIC_API_KEY for real model calls\n`;
}

/** How a flow's model calls went wrong when the output does not say it plainly: one line, said first. */
export function callsCause(calls: FlowCalls | undefined, model: string | undefined): string {
  const cause = calls ? unreachableCause(calls, model) : undefined;
  return cause ? `${cause}\n` : '';
}

export const describeUsage = (usage: Usage) =>
  `${usage.calls} model call${usage.calls === 1 ? '' : 's'}, ${formatTokens(usage.inputTokens, usage.outputTokens)}`;

/** A flow's data on stdout: a string as it is to a pipe, its control characters shown to a terminal (JSON escapes them anyway). */
export const printData = (value: unknown) => {
  if (value === undefined) return;
  const text = typeof value === 'string' ? (process.stdout.isTTY ? visibleControls(value) : value) : JSON.stringify(value, null, 2);
  process.stdout.write(`${text}\n`);
};

/** The part of a flow's output a person wants on stdout: as its definition says, else its `result`. */
function mainResult(pattern: string, output: Record<string, unknown>): unknown {
  const definition = flowDefinition(pattern);
  if (definition?.result) return definition.result(output);
  return 'result' in output ? output.result : output;
}

/** What the command saw of the flow's model calls (its journal) and which model it ran with, for the end lines. */
export interface CallsSeen {
  calls: FlowCalls;
  model: string | undefined;
}

export function printFlowResult(pattern: string, flowId: string, output: FlowOutput, json: boolean, seen?: CallsSeen) {
  if (json) printData({ flowId, pattern, ...output });
  else {
    // A flow cancelled or crashed has no machine output: nothing for stdout, the reason on stderr.
    if (output.usage !== undefined) printData(mainResult(pattern, output));
    process.stderr.write(
      callsCause(seen?.calls, seen?.model) +
        `${pattern} ${flowId}: ${output.status}${output.reason ? ` (${output.reason})` : ''}; ${output.usage ? describeUsage(output.usage as Usage) : ''}\n` +
        offlineHint(output, seen?.calls, seen?.model),
    );
  }
  return output.status === 'done' ? ExitCode.ok : ExitCode.flowFailed;
}

/**
 * A flow that ended on a cause no fallback helps (the model refused the API key, the account
 * has no credit, the model does not exist): the user's to fix, as a bad environment is
 * (exit 2), not a flow that ran and fell short (exit 1). One line, the cause said once; with
 * --json `{flowId, pattern, status: "failed", error: {code, message}}` on stdout too.
 * Undefined when the flow ended otherwise.
 */
export function flowStopped(pattern: string, flowId: string, error: { code: string; message: string } | undefined, json: boolean): number | undefined {
  if (!isFlowStopCode(error?.code)) return undefined;
  if (json) printData({ flowId, pattern, status: 'failed', error: { code: error.code, message: error.message } });
  process.stderr.write(`microtask: ${error.message} (${error.code}; flow ${flowId} failed)\n`);
  return ExitCode.usage;
}

/**
 * A flow its store stopped (a full disk, a store down past its retries), or a start the
 * store refused: not a failure of the flow (exit 1) nor a crash (exit 3), but the user's
 * to fix, as a bad environment is (exit 2). One line naming the cause; with --json the
 * same as an object on stdout, `status: "halted"` (resumable) or `"not_started"`. Any other
 * error is rethrown.
 */
export async function storeStopped(e: unknown, pattern: string, store: SnapshotStore, json: boolean): Promise<number> {
  let stop: { flowId: string | null; cause: string; step?: number };
  if (e instanceof FlowHaltedError) {
    // The step it stands at is the last one saved: the record on disk (a read still works on a full disk).
    const steps = (await store.load(e.flowId).catch(() => undefined))?.record.steps;
    stop = { flowId: e.flowId, cause: e.message, ...(steps !== undefined ? { step: steps } : {}) };
  } else if (isStoreUnavailable(e)) stop = { flowId: null, cause: e.message };
  else throw e;
  if (json) {
    printData({
      flowId: stop.flowId,
      pattern,
      status: stop.flowId === null ? 'not_started' : 'halted',
      error: { code: 'STORE_UNAVAILABLE', message: stop.cause },
      ...(stop.step !== undefined ? { step: stop.step } : {}),
    });
  }
  process.stderr.write(`microtask: ${describeStoreStop({ cause: stop.cause, ...(stop.flowId !== null ? { flowId: stop.flowId } : {}), ...(stop.step !== undefined ? { step: stop.step } : {}) })}\n`);
  return ExitCode.storeUnavailable;
}
