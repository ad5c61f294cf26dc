import type { Command } from 'commander';
import { loadConfig } from '../../config.js';
import { FlowHostError } from '../../flowHost.js';
import { SnapshotStoreError } from '../../persistence/SnapshotStore.js';
import { resumeFlow } from '../../runFlow.js';
import { UsageError } from '../exitCodes.js';
import { hintAnswer } from '../flowHints.js';
import { flowStopped, printFlowResult, storeStopped } from '../flowOutput.js';
import { FlowCalls } from '../flowCalls.js';
import { journalWith, progressFor } from '../flowProgress.js';
import { flowsOption } from '../flowsOption.js';
import { startRuntime } from '../runtimeStart.js';

/** `microtask resume <flowId>`: an unfinished embedded flow run on from its last snapshot. */
export function addResumeCommand(program: Command, setExit: (code: number) => void) {
  program
    .command('resume')
    .description('resume an unfinished embedded flow from its last snapshot and run it to its end')
    .argument('<flowId>', 'the flow, as `microtask flows` lists it')
    .option('--json', 'print the whole output as JSON')
    .option('--no-progress', 'do not print state changes on stderr')
    .addOption(flowsOption())
    .addHelpText('after', '\nA microtask that was in flight runs again with the same key: a result stored before the\ncrash costs nothing, otherwise it is called once.')
    .action(async (flowId: string, options: { json?: boolean; progress?: boolean }) => {
      setExit(await resumeCommand(flowId, options));
    });
}

async function resumeCommand(flowId: string, options: { json?: boolean; progress?: boolean }) {
  const config = loadConfig();
  if (config.NATS_URL) {
    throw new UsageError('with NATS_URL set, the daemon resumes unfinished flows when it starts; `microtask resume` resumes embedded flows (unset NATS_URL)');
  }
  // Closed when the command returns: its writes committed, its database handle released.
  await using runtime = await startRuntime({ quiet: true });
  // Which model answers is worth saying only for a flow that will run: not before "no flow".
  const stored = await runtime.store.load(flowId).catch(() => undefined);
  if (stored?.record.status === 'running') process.stderr.write(`model: ${runtime.modelDescription}\n`);
  let result;
  const calls = new FlowCalls();
  try {
    const progress = progressFor(options);
    result = await resumeFlow(runtime, flowId, { journal: journalWith(runtime.journal, progress, calls), onWaiting: hintAnswer }).finally(() => progress?.done());
    await runtime.journal.flush();
  } catch (e) {
    if (e instanceof FlowHostError || e instanceof SnapshotStoreError) throw new UsageError(e.message, e.code);
    const pattern = (await runtime.store.load(flowId).catch(() => undefined))?.record.pattern ?? 'unknown';
    return storeStopped(e, pattern, runtime.store, options.json ?? false);
  }
  if (result.outcome === 'finished') process.stderr.write(`flow ${flowId} had already ended (${result.record.status}); its output:\n`);
  return (
    flowStopped(result.record.pattern, flowId, result.record.error, options.json ?? false) ??
    printFlowResult(result.record.pattern, flowId, result.output, options.json ?? false, { calls, model: runtime.modelDescription })
  );
}
