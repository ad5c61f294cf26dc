import { spawn } from 'node:child_process';
import { openSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Option, type Command } from 'commander';
import { writeToolFiles } from '../../actors/toolWriter.js';
import { loadConfig, type Config } from '../../config.js';
import { ToolSpecSchema, type ToolSpec } from '../../contracts/toolSpec.js';
import type { Usage } from '../../contracts/usage.js';
import type { FlowDone } from '../../daemon/protocol.js';
import { createLogger } from '../../log.js';
import type { ModuleRecord, ToolBuilderOutput } from '../../machines/toolBuilder.js';
import { mkdirs } from '../../mkdirs.js';
import { runFlow, startDetached, toolsDir } from '../../runFlow.js';
import { connectBus, natsJournal } from '../../composition.js';
import { renderToolFiles } from '../../toolFiles.js';
import { DaemonClient } from '../busClient.js';
import { assertWritableDirectory } from '../directories.js';
import { ExitCode, UsageError } from '../exitCodes.js';
import { hintResumeOnInterrupt } from '../flowHints.js';
import { FlowCalls } from '../flowCalls.js';
import { callsCause, describeUsage, flowStopped, offlineHint, printData, storeStopped, type CallsSeen } from '../flowOutput.js';
import { journalWith, progressFor } from '../flowProgress.js';
import { positiveInt, unitInterval } from '../optionParsers.js';
import { prune } from '../prune.js';
import { readJsonFile } from '../readJson.js';
import { startRuntime } from '../runtimeStart.js';

interface BuildOptions {
  out?: string;
  json?: boolean;
  threshold?: number;
  maxCalls?: number;
  maxTokens?: number;
  progress?: boolean;
  detach?: boolean;
}

/** `microtask build <spec.json>`: the tool builder, embedded or by a daemon on NATS. */
export function addBuildCommand(program: Command, setExit: (code: number) => void) {
  program
    .command('build')
    .description('build a tool from a spec with the tool builder and write it (embedded; with NATS_URL, by a daemon)')
    .argument('<spec.json>', 'the tool spec: {name, description, modules: [{name, purpose}]}')
    .option('--out <dir>', 'write the tool to <dir>/<name> (default: $MICROTASK_STATE_DIR/tools)')
    .option('--json', 'print the whole output as JSON')
    .addOption(new Option('--threshold <n>', 'quality a module must reach, 0..1 (default 0.8)').argParser(unitInterval))
    .addOption(new Option('--max-calls <n>', 'stop before more model calls than this').argParser(positiveInt('--max-calls')))
    .addOption(new Option('--max-tokens <n>', 'stop once this many tokens are spent').argParser(positiveInt('--max-tokens')))
    .option('--no-progress', 'do not print progress on stderr')
    .option('--detach', 'start the build and print its flow id at once; it runs on (a daemon, or a background process)')
    .addHelpText(
      'after',
      `
Examples:
  microtask build examples/api-tester.json
  node .microtask/tools/api-tester/src/cli.js --help
  NATS_URL=nats://127.0.0.1:4222 microtask build examples/api-tester.json --detach

With NATS_URL set, the request goes to the daemons on NATS (docs/protocol.md); the tool is
written here, from the modules in the flow's output. On a terminal the progress is one live
block; piped, a line per change. Stdout gets the tool's directory (or the output with --json).`,
    )
    .action(async (specFile: string, options: BuildOptions) => {
      setExit(await buildCommand(specFile, options));
    });
}

async function isExampleSpec(spec: { name: string; description: string; modules: unknown[] }): Promise<boolean> {
  const example = JSON.parse(await readFile(new URL('../../../examples/api-tester.json', import.meta.url), 'utf8'));
  return JSON.stringify({ ...spec, requestId: undefined }) === JSON.stringify({ ...example, requestId: undefined });
}

async function buildCommand(specFile: string, options: BuildOptions) {
  const spec = await readJsonFile(specFile, ToolSpecSchema, 'tool spec');
  const config = loadConfig();
  const outRoot = options.out ?? toolsDir(config.MICROTASK_STATE_DIR);
  if (!options.detach) await assertWritableDirectory(outRoot);
  const budget =
    options.maxCalls || options.maxTokens
      ? { ...(options.maxCalls ? { maxCalls: options.maxCalls } : {}), ...(options.maxTokens ? { maxTokens: options.maxTokens } : {}) }
      : undefined;
  const extra = { ...(options.threshold !== undefined ? { threshold: options.threshold } : {}), ...(budget ? { budget } : {}) };
  if (config.NATS_URL) return buildOverBus(spec, extra, outRoot, config, options);

  // Closed when the command returns: its writes committed, its database handle released.
  await using runtime = await startRuntime();
  if (runtime.model.name === 'cassette' && !config.MICROTASK_CASSETTE && !(await isExampleSpec(spec))) {
    throw new UsageError(
      `offline mode (no ANTHROPIC_API_KEY) replays hand-written answers for examples/api-tester.json only; ` +
        `to build "${spec.name}", set ANTHROPIC_API_KEY (or MICROTASK_CASSETTE to a cassette you recorded with MICROTASK_RECORD)`,
      'OFFLINE_UNKNOWN_SPEC',
    );
  }
  await prune(runtime.store, runtime.config, runtime.logger, runtime.journal, runtime.results);
  if (options.detach) {
    // Saved, then run to its end by a process of its own: this one returns the id at once.
    let flowId;
    try {
      flowId = await startDetached(runtime, 'tool-builder', { spec, ...extra }, { outRoot });
    } catch (e) {
      return storeStopped(e, 'tool-builder', runtime.store, options.json ?? false);
    }
    const log = join(config.MICROTASK_STATE_DIR, 'logs', `${flowId}.log`);
    await mkdirs(join(config.MICROTASK_STATE_DIR, 'logs'));
    const fd = openSync(log, 'a');
    spawn(process.execPath, [process.argv[1]!, 'resume', flowId, '--no-progress', '--json'], {
      detached: true,
      stdio: ['ignore', fd, fd],
      env: process.env,
    }).unref();
    printData(flowId);
    process.stderr.write(`started ${flowId} in the background (log: ${log}); follow it with \`microtask show ${flowId} --follow\`\n`);
    return ExitCode.ok;
  }
  const progress = progressFor(options);
  const calls = new FlowCalls();
  let built;
  try {
    built = await runFlow(runtime, 'tool-builder', { spec, ...extra }, {
      outRoot,
      onStarted: hintResumeOnInterrupt,
      journal: journalWith(runtime.journal, progress, calls),
    }).finally(() => progress?.done());
  } catch (e) {
    return storeStopped(e, 'tool-builder', runtime.store, options.json ?? false);
  }
  await runtime.journal.flush();
  return flowStopped('tool-builder', built.flowId, built.record.error, options.json ?? false) ?? printBuildResult(spec.name, built.flowId, built.output, options.json ?? false, { calls, model: runtime.modelDescription });
}

function printBuildResult(name: string, flowId: string, output: Record<string, unknown>, json: boolean, seen?: CallsSeen) {
  if (json) printData({ flowId, pattern: 'tool-builder', ...output });
  else {
    if (output.dir) printData(output.dir);
    const files = ((output.files as string[] | undefined) ?? []).length;
    process.stderr.write(
      callsCause(seen?.calls, seen?.model) +
        `${name} ${flowId}: ${output.status}${output.reason ? ` (${output.reason})` : ''}; ` +
        `${files ? `${files} files written` : 'nothing written'}; ${output.usage ? describeUsage(output.usage as Usage) : ''}\n` +
        (output.dir ? `try it: node ${output.dir}/src/cli.js --help\n` : '') +
        offlineHint(output, seen?.calls, seen?.model),
    );
  }
  return output.status === 'done' ? ExitCode.ok : ExitCode.flowFailed;
}


/**
 * \`build\` with NATS: publishes the request, follows the flow's journal for progress and
 * its done message for the output, and writes the tool here (the daemon may run on
 * another machine: its disk is not ours).
 */
async function buildOverBus(spec: ToolSpec, extra: { threshold?: number; budget?: unknown }, outRoot: string, config: Config, options: BuildOptions) {
  const logger = createLogger(config.MICROTASK_LOG_LEVEL ?? 'error');
  const bus = await connectBus(config, logger, 'cli');
  try {
    const client = new DaemonClient(bus, config.MICROTASK_SUBJECT_PREFIX);
    const flowId = await client.build(spec, extra);
    if (options.detach) {
      printData(flowId);
      process.stderr.write(`started ${flowId} on the daemon; follow it with \`microtask show ${flowId} --follow\`\n`);
      return ExitCode.ok;
    }
    process.stderr.write(`started ${flowId} on the daemon (Ctrl-C stops following; the flow goes on)\n`);
    const progress = progressFor(options);
    // Followed with or without progress: the last lines say why the flow ran on fallbacks.
    const calls = new FlowCalls();
    const journal = await natsJournal(bus, config, logger);
    const follow = await journal.follow(flowId, (e) => {
      calls.onEntry(e);
      progress?.onEntry(e);
    });
    let done: FlowDone;
    try {
      done = await client.done(flowId);
    } finally {
      await follow?.stop();
      progress?.done();
    }
    const stopped = flowStopped('tool-builder', flowId, done.error, options.json ?? false);
    if (stopped !== undefined) return stopped;
    const output = (done.output ?? { status: 'failed', reason: done.error?.message ?? done.status }) as ToolBuilderOutput & Record<string, unknown>;
    // Written here, from the modules in the output: the same files the daemon wrote on its side.
    if (output.entry && output.modules?.length) {
      const modules = Object.fromEntries(output.modules.filter((m: ModuleRecord) => m.code !== undefined).map((m: ModuleRecord) => [m.name, m.code!]));
      await assertWritableDirectory(outRoot);
      const { dir, written } = await writeToolFiles(outRoot, spec.name, renderToolFiles(spec, modules, output.entry));
      Object.assign(output, { dir, files: written });
    }
    return printBuildResult(spec.name, flowId, output, options.json ?? false, { calls, model: undefined });
  } finally {
    await bus.close();
  }
}
