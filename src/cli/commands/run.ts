import type { Command } from 'commander';
import type { z } from 'zod';
import { loadConfig } from '../../config.js';
import { flowDefinition, flowsModuleInUse } from '../../flows.js';
import { patternNames } from '../../patterns/index.js';
import { runFlow, toolsDir } from '../../runFlow.js';
import { assertWritableDirectory } from '../directories.js';
import { UsageError } from '../exitCodes.js';
import { hintAnswer, hintResumeOnInterrupt } from '../flowHints.js';
import { flowStopped, printFlowResult, storeStopped } from '../flowOutput.js';
import { FlowCalls } from '../flowCalls.js';
import { journalWith, progressFor } from '../flowProgress.js';
import { flowsOption } from '../flowsOption.js';
import { prune } from '../prune.js';
import { readJsonFile } from '../readJson.js';
import { requiredOption } from '../requiredOption.js';
import { startRuntime } from '../runtimeStart.js';
import { statelyFor } from '../statelyInspector.js';

interface RunOptions {
  input: string;
  json?: boolean;
  out?: string;
  progress?: boolean;
  inspect?: boolean;
}

/** `microtask run <pattern>`: a pattern (or a flow of --flows) run to its end in this process. */
export function addRunCommand(program: Command, setExit: (code: number) => void) {
  program
    .command('run')
    .description('run a pattern in embedded mode and print its output')
    .argument('<pattern>', `the pattern to run: ${patternNames.join(', ')}, or a flow of --flows`)
    .addOption(flowsOption())
    .addOption(requiredOption('-i, --input <file>', "JSON file with the pattern's input"))
    .option('--json', 'print the whole output as JSON')
    .option('--out <dir>', 'tool-builder only: write the tool under this directory')
    .option('--no-progress', 'do not print progress on stderr')
    .option('--inspect', "send this flow's actors to Stately's inspector (@statelyai/inspect)")
    .addHelpText(
      'after',
      `
Examples:
  microtask run microtask --input examples/microtask.json
  microtask run feedback-loop --input examples/feedback-loop.json --json

Inputs are checked against each pattern's schema (src/patterns/); examples/ has one per pattern.
It always runs the flow in this process (embedded, state under MICROTASK_STATE_DIR), even with NATS_URL
set: to run a flow on the daemons, start it with the client (microtask-orchestrator/client).`,
    )
    .action(async (pattern: string, options: RunOptions) => {
      setExit(await runCommand(pattern, options));
    });
}

async function runCommand(pattern: string, options: RunOptions) {
  // A built-in pattern, or a flow of the module given with --flows (MICROTASK_FLOWS).
  const definition = flowDefinition(pattern);
  if (!definition) {
    const names = [...patternNames, ...flowsModuleInUse().flows.map((f) => f.name)].join(', ');
    throw new UsageError(`unknown pattern "${pattern}". Allowed choices are ${names}${flowsModuleInUse().flows.length ? '' : ' (your own flows: --flows <module>)'}`);
  }
  const config = loadConfig();
  if (options.out !== undefined && pattern !== 'tool-builder') throw new UsageError('--out is for the tool-builder pattern only');
  if (pattern === 'tool-builder') await assertWritableDirectory(options.out ?? toolsDir(config.MICROTASK_STATE_DIR));
  const input = await readJsonFile(options.input, definition.input as z.ZodType<Record<string, unknown>>, `${pattern} input`);
  // `build` goes to the daemons when NATS_URL is set, so a user expects `run` to as well and
  // then looks for the flow there (`microtask flows`): say where it runs instead.
  if (config.NATS_URL) {
    process.stderr.write(
      `microtask: run runs the flow in this process (embedded, state in ${config.MICROTASK_STATE_DIR}); NATS_URL is not used: to run it on the daemons, start it with the client (microtask-orchestrator/client) or, for a tool, \`microtask build\`\n`,
    );
  }
  // Closed when the command returns: its writes committed, its database handle released.
  await using runtime = await startRuntime();
  await prune(runtime.store, runtime.config, runtime.logger, runtime.journal, runtime.results);
  const stately = options.inspect ? await statelyFor(runtime.logger) : undefined;
  const progress = progressFor(options);
  const calls = new FlowCalls();
  try {
    let ran;
    try {
      ran = await runFlow(runtime, pattern, input, {
        onStarted: hintResumeOnInterrupt,
        onWaiting: hintAnswer,
        outRoot: options.out,
        journal: journalWith(runtime.journal, progress, calls),
        ...(stately ? { inspect: stately.inspect } : {}),
      }).finally(() => progress?.done());
    } catch (e) {
      return await storeStopped(e, pattern, runtime.store, options.json ?? false);
    }
    await runtime.journal.flush();
    return flowStopped(pattern, ran.flowId, ran.record.error, options.json ?? false) ?? printFlowResult(pattern, ran.flowId, ran.output, options.json ?? false, { calls, model: runtime.modelDescription });
  } finally {
    stately?.stop();
  }
}
