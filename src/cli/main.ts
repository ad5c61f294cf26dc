import { constants } from 'node:fs';
import { access, mkdir, readFile } from 'node:fs/promises';
import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import { z } from 'zod';
import type { MicrotaskResult } from '../actors/microtaskTypes.js';
import { CassetteError } from '../actors/model/CassetteModel.js';
import { describeIssues } from '../actors/model/prompt.js';
import { answerSchemas } from '../machines/answers.js';
import { ConfigError, loadConfig, type Config } from '../config.js';
import { createLogger, type Logger } from '../log.js';
import { connectBus, snapshotStore, startDaemonService, startWorkerService } from '../services.js';
import { isPatternName, patternInputSchemas, patternNames, type PatternName } from '../patterns.js';
import { FlowHostError } from '../flowHost.js';
import { SnapshotStoreError, type FlowSummary, type SnapshotStore } from '../persistence/SnapshotStore.js';
import { resumeFlow, runFlow, stateDirs, toolsDir, type FlowOutput } from '../runFlow.js';
import { createRuntime } from '../runtime.js';
import { ToolSpecSchema } from '../toolSpec.js';
import { totalTokens, type Usage } from '../usage.js';
import { ExitCode, UsageError } from './exitCodes.js';
import { progressPrinter } from './progress.js';
import { readJsonFile } from './readJson.js';

const EXIT_CODES_HELP = `
Exit codes:
  0  done
  1  the flow finished without success (failed, fell back, exhausted, or over budget)
  2  wrong usage: unknown command or flag, bad input file, bad environment variable
  3  an unexpected error (see the message and the logs)

\`run\` and \`build\` run in this process (embedded); \`daemon\` and \`worker\` use NATS when NATS_URL is set.

Environment: ANTHROPIC_API_KEY (unset: offline cassette), ANTHROPIC_BASE_URL, MICROTASK_MODEL,
MICROTASK_STATE_DIR, MICROTASK_TIMEOUT_MS, MICROTASK_LOG_LEVEL, NATS_URL. See the README.`;

async function startRuntime() {
  const config = loadConfig();
  // One-shot commands print progress and a summary; logs are for what went wrong.
  const logger = createLogger(config.MICROTASK_LOG_LEVEL ?? 'error');
  const runtime = await createRuntime(config, logger, { answers: answerSchemas });
  process.stderr.write(`model: ${runtime.modelDescription}\n`);
  return runtime;
}

/** Creates the directory (and its parents) and proves it writable, before any model call is paid for. */
async function assertWritableDirectory(dir: string): Promise<void> {
  try {
    await mkdir(dir, { recursive: true });
    await access(dir, constants.W_OK);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new UsageError(
      `cannot write tools to ${dir} (${code ?? (e as Error).message}): choose another --out or MICROTASK_STATE_DIR`,
      'OUT_NOT_WRITABLE',
    );
  }
}

async function isExampleSpec(spec: { name: string; description: string; modules: unknown[] }): Promise<boolean> {
  const example = JSON.parse(await readFile(new URL('../../examples/api-tester.json', import.meta.url), 'utf8'));
  return JSON.stringify({ ...spec, requestId: undefined }) === JSON.stringify({ ...example, requestId: undefined });
}

/** A flow that fell back on cassette misses: say why, in words a new user can act on. */
const offlineHint = (output: Record<string, unknown>) =>
  JSON.stringify(output).includes('cassette_miss')
    ? '\nhint: the offline cassette only has answers for the examples in examples/; set ANTHROPIC_API_KEY for real model calls\n'
    : '';

const describeUsage = (usage: Usage) =>
  `${usage.calls} model call${usage.calls === 1 ? '' : 's'}, ${totalTokens(usage)} tokens (${usage.inputTokens} in, ${usage.outputTokens} out)`;

const printData = (value: unknown) => {
  if (value !== undefined) process.stdout.write(`${typeof value === 'string' ? value : JSON.stringify(value, null, 2)}\n`);
};

/** The part of a pattern's output a person wants on stdout. */
function mainResult(pattern: PatternName, output: Record<string, unknown>): unknown {
  switch (pattern) {
    case 'reentrant':
      return output.output;
    case 'tool-builder':
      return output.dir;
    case 'parallel':
      // Each task's answer, in input order; a failed one shows its fallback and why.
      return (output.results as Array<MicrotaskResult | null>).map((r) =>
        r === null ? null : r.success ? r.result : { failed: r.error?.kind, fallback: r.fallback },
      );
    case 'incremental':
      return (output.results as Array<{ status: string; result?: unknown; error?: string }>).map((r) =>
        r.status === 'done' ? r.result : { [r.status]: r.error ?? true },
      );
    default:
      return output.result;
  }
}

/** Finished flows older than the retention go: snapshot stores must not grow without bound. */
async function prune(store: SnapshotStore, config: Config, logger: Logger) {
  const pruned = await store.prune(new Date(Date.now() - config.MICROTASK_RETENTION_HOURS * 3_600_000));
  if (pruned) logger.info({ pruned }, 'old finished flows pruned');
}

function printFlowResult(pattern: string, flowId: string, output: FlowOutput, json: boolean) {
  if (json) printData({ flowId, pattern, ...output });
  else {
    if (isPatternName(pattern)) printData(mainResult(pattern, output));
    process.stderr.write(
      `${pattern} ${flowId}: ${output.status}${output.reason ? ` (${output.reason})` : ''}; ${output.usage ? describeUsage(output.usage as Usage) : ''}\n${offlineHint(output)}`,
    );
  }
  return output.status === 'done' ? ExitCode.ok : ExitCode.flowFailed;
}

async function flowsCommand(options: { json?: boolean; status?: string }) {
  const config = loadConfig();
  const logger = createLogger(config.MICROTASK_LOG_LEVEL ?? 'error');
  const bus = await connectBus(config, logger, 'cli');
  try {
    const store = await snapshotStore(bus, config, logger);
    await prune(store, config, logger);
    const statuses = options.status ? (options.status.split(',') as FlowSummary['status'][]) : undefined;
    const flows = await store.list(statuses ? { status: statuses } : {});
    if (options.json) printData(flows);
    else if (!flows.length) process.stderr.write(`no flows${statuses ? ` with status ${statuses.join(' or ')}` : ''} in ${bus.transport === 'nats' ? 'NATS KV' : stateDirs(config.MICROTASK_STATE_DIR).flows}\n`);
    else {
      const rows = flows.map((f) => [f.flowId, f.pattern, f.status, typeof f.state === 'string' ? f.state : JSON.stringify(f.state), f.updatedAt]);
      const widths = [0, 1, 2, 3].map((i) => Math.max(...rows.map((r) => r[i]!.length), ['FLOW', 'PATTERN', 'STATUS', 'STATE'][i]!.length));
      const line = (r: string[]) => r.map((c, i) => (i < 4 ? c.padEnd(widths[i]!) : c)).join('  ');
      process.stdout.write(`${line(['FLOW', 'PATTERN', 'STATUS', 'STATE', 'UPDATED'])}\n${rows.map(line).join('\n')}\n`);
    }
    return ExitCode.ok;
  } finally {
    await bus.close();
  }
}

async function resumeCommand(flowId: string, options: { json?: boolean; progress?: boolean }) {
  const config = loadConfig();
  if (config.NATS_URL) {
    throw new UsageError('with NATS_URL set, the daemon resumes unfinished flows when it starts; `microtask resume` resumes embedded flows (unset NATS_URL)');
  }
  const runtime = await startRuntime();
  let result;
  try {
    result = await resumeFlow(runtime, flowId, options.progress === false ? {} : { inspect: progressPrinter() });
  } catch (e) {
    if (e instanceof FlowHostError || e instanceof SnapshotStoreError) throw new UsageError(e.message, e.code);
    throw e;
  }
  if (result.outcome === 'finished') process.stderr.write(`flow ${flowId} had already ended (${result.record.status}); its output:\n`);
  return printFlowResult(result.record.pattern, flowId, result.output, options.json ?? false);
}

async function runCommand(patternArg: string, options: { input: string; json?: boolean; out?: string; progress?: boolean }) {
  if (!isPatternName(patternArg)) throw new UsageError(`unknown pattern "${patternArg}"; one of: ${patternNames.join(', ')}`);
  const pattern = patternArg;
  if (options.out !== undefined && pattern !== 'tool-builder') throw new UsageError('--out is for the tool-builder pattern only');
  if (pattern === 'tool-builder') await assertWritableDirectory(options.out ?? toolsDir(loadConfig().MICROTASK_STATE_DIR));
  const input = await readJsonFile(options.input, patternInputSchemas[pattern] as z.ZodType<Record<string, unknown>>, `${pattern} input`);
  const runtime = await startRuntime();
  await prune(runtime.store, runtime.config, runtime.logger);
  const { flowId, output } = await runFlow(runtime, pattern, input, {
    onStarted: hintResumeOnInterrupt,
    outRoot: options.out,
    ...(options.progress === false ? {} : { inspect: progressPrinter() }),
  });
  return printFlowResult(pattern, flowId, output, options.json ?? false);
}

const positiveInt = (what: string) => (value: string) => {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError(`${what} must be a whole number of at least 1`);
  return n;
};
const unitInterval = (value: string) => {
  const n = Number(value);
  if (!Number.isFinite(n) || n < 0 || n > 1) throw new InvalidArgumentError('the threshold is a number from 0 to 1');
  return n;
};

async function buildCommand(
  specFile: string,
  options: { out?: string; json?: boolean; threshold?: number; maxCalls?: number; maxTokens?: number; progress?: boolean },
) {
  const spec = await readJsonFile(specFile, ToolSpecSchema, 'tool spec');
  const config = loadConfig();
  const outRoot = options.out ?? toolsDir(config.MICROTASK_STATE_DIR);
  await assertWritableDirectory(outRoot);
  const runtime = await startRuntime();
  if (runtime.model.name === 'cassette' && !config.MICROTASK_CASSETTE && !(await isExampleSpec(spec))) {
    throw new UsageError(
      `offline mode (no ANTHROPIC_API_KEY) replays hand-written answers for examples/api-tester.json only; ` +
        `to build "${spec.name}", set ANTHROPIC_API_KEY (or MICROTASK_CASSETTE to a cassette you recorded with MICROTASK_RECORD)`,
      'OFFLINE_UNKNOWN_SPEC',
    );
  }
  const budget =
    options.maxCalls || options.maxTokens
      ? { ...(options.maxCalls ? { maxCalls: options.maxCalls } : {}), ...(options.maxTokens ? { maxTokens: options.maxTokens } : {}) }
      : undefined;
  await prune(runtime.store, runtime.config, runtime.logger);
  const { flowId, output } = await runFlow(
    runtime,
    'tool-builder',
    { spec, ...(options.threshold !== undefined ? { threshold: options.threshold } : {}), ...(budget ? { budget } : {}) },
    { outRoot, onStarted: hintResumeOnInterrupt, ...(options.progress === false ? {} : { inspect: progressPrinter() }) },
  );
  if (options.json) printData({ flowId, pattern: 'tool-builder', ...output });
  else {
    if (output.dir) printData(output.dir);
    const files = (output.files as string[]).length;
    process.stderr.write(
      `${spec.name} ${flowId}: ${output.status}${output.reason ? ` (${output.reason})` : ''}; ` +
        `${files ? `${files} files written` : 'nothing written'}; ${describeUsage(output.usage as Usage)}\n` +
        (output.dir ? `try it: node ${output.dir}/src/cli.js --help\n` : '') +
        offlineHint(output),
    );
  }
  return output.status === 'done' ? ExitCode.ok : ExitCode.flowFailed;
}

/**
 * Runs a service until SIGINT or SIGTERM: then `stop` (take no new work, let what is in
 * flight finish), and exit 0. A second signal exits at once.
 */
async function serveUntilSignal(stop: () => Promise<void>, logger: Logger): Promise<number> {
  // An embedded daemon has no socket open: without this, Node would find nothing to wait for and exit.
  const keepAlive = setInterval(() => undefined, 1 << 30);
  return new Promise<number>((resolve) => {
    let stopping = false;
    const onSignal = (signal: NodeJS.Signals) => {
      if (stopping) {
        logger.warn({ signal }, 'second signal: exiting now');
        process.exit(ExitCode.flowFailed);
      }
      stopping = true;
      logger.info({ signal }, 'stopping: no new work, finishing what is in flight (signal again to exit now)');
      stop().then(
        () => resolve(ExitCode.ok),
        (e: unknown) => {
          logger.error({ err: e }, 'could not stop cleanly');
          resolve(ExitCode.internal);
        },
      );
    };
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
  }).finally(() => clearInterval(keepAlive));
}

/** Ctrl-C during a one-shot flow: its snapshot is saved, so say how to finish it. */
function hintResumeOnInterrupt(flowId: string) {
  process.once('SIGINT', () => {
    process.stderr.write(`\ninterrupted; the flow is saved: finish it with \`microtask resume ${flowId}\`\n`);
    process.exit(130);
  });
}

async function daemonCommand(options: { worker?: boolean }) {
  const config = loadConfig();
  const logger = createLogger(config.MICROTASK_LOG_LEVEL ?? 'info');
  const bus = await connectBus(config, logger, 'daemon');
  // Embedded, microtasks run in the daemon itself; with NATS, on workers (or here with --worker).
  const withWorker = options.worker === true && bus.transport === 'nats';
  const worker = withWorker ? await startWorkerService(bus, config, logger) : undefined;
  const daemon = await startDaemonService(bus, config, logger);
  logger.info(
    { bus: bus.transport, prefix: config.MICROTASK_SUBJECT_PREFIX, worker: withWorker },
    bus.transport === 'memory'
      ? 'daemon running embedded (no NATS_URL): in-process bus, reachable only from this process'
      : 'daemon running',
  );
  return serveUntilSignal(async () => {
    await daemon.stop();
    await worker?.stop();
    await bus.close();
  }, logger);
}

async function workerCommand(options: { concurrency?: number }) {
  const config = loadConfig();
  if (!config.NATS_URL) {
    throw new UsageError('a worker takes tasks from NATS: set NATS_URL (an embedded `microtask daemon` runs its own worker)');
  }
  const logger = createLogger(config.MICROTASK_LOG_LEVEL ?? 'info');
  const bus = await connectBus(config, logger, 'worker');
  const worker = await startWorkerService(
    bus,
    options.concurrency ? { ...config, MICROTASK_WORKER_CONCURRENCY: options.concurrency } : config,
    logger,
  );
  return serveUntilSignal(async () => {
    await worker.stop();
    await bus.close();
  }, logger);
}

export function buildProgram(setExit: (code: number) => void): Command {
  const program = new Command('microtask')
    .description('Run AI microtasks and the flows made of them: timeouts, fallbacks, structured answers, durable state.')
    .version('0.1.0')
    .showHelpAfterError('(run with --help for usage)')
    .addHelpText('after', EXIT_CODES_HELP)
    .exitOverride();

  program
    .command('run')
    .description('run a pattern in embedded mode and print its output')
    .addArgument(program.createArgument('<pattern>', 'the pattern to run').choices(patternNames))
    .requiredOption('-i, --input <file>', "JSON file with the pattern's input")
    .option('--json', 'print the whole output as JSON')
    .option('--out <dir>', 'tool-builder only: write the tool under this directory')
    .option('--no-progress', 'do not print state changes on stderr')
    .addHelpText(
      'after',
      `
Examples:
  microtask run microtask --input examples/microtask.json
  microtask run feedback-loop --input examples/feedback-loop.json --json

Inputs are checked against each pattern's schema (src/patterns.ts); examples/ has one per pattern.`,
    )
    .action(async (pattern: string, options: { input: string; json?: boolean; out?: string; progress?: boolean }) => {
      setExit(await runCommand(pattern, options));
    });

  program
    .command('build')
    .description('build a tool from a spec with the tool builder, in embedded mode, and write it')
    .argument('<spec.json>', 'the tool spec: {name, description, modules: [{name, purpose}]}')
    .option('--out <dir>', 'write the tool to <dir>/<name> (default: $MICROTASK_STATE_DIR/tools)')
    .option('--json', 'print the whole output as JSON')
    .addOption(new Option('--threshold <n>', 'quality a module must reach, 0..1 (default 0.8)').argParser(unitInterval))
    .addOption(new Option('--max-calls <n>', 'stop before more model calls than this').argParser(positiveInt('--max-calls')))
    .addOption(new Option('--max-tokens <n>', 'stop once this many tokens are spent').argParser(positiveInt('--max-tokens')))
    .option('--no-progress', 'do not print state changes on stderr')
    .addHelpText('after', '\nExample:\n  microtask build examples/api-tester.json\n  node .microtask/tools/api-tester/src/cli.js --help')
    .action(async (specFile: string, options: Parameters<typeof buildCommand>[1]) => {
      setExit(await buildCommand(specFile, options));
    });

  program
    .command('flows')
    .description('list flows with their status, state and last update (embedded: MICROTASK_STATE_DIR; NATS: KV)')
    .option('--status <list>', 'only these statuses, comma-separated: running,done,failed,cancelled')
    .option('--json', 'print the list as JSON')
    .action(async (options: { json?: boolean; status?: string }) => {
      setExit(await flowsCommand(options));
    });

  program
    .command('resume')
    .description('resume an unfinished embedded flow from its last snapshot and run it to its end')
    .argument('<flowId>', 'the flow, as `microtask flows` lists it')
    .option('--json', 'print the whole output as JSON')
    .option('--no-progress', 'do not print state changes on stderr')
    .addHelpText('after', '\nA microtask that was in flight runs again with the same key: a result stored before the\ncrash costs nothing, otherwise it is called once.')
    .action(async (flowId: string, options: { json?: boolean; progress?: boolean }) => {
      setExit(await resumeCommand(flowId, options));
    });

  program
    .command('daemon')
    .description('serve the bus protocol: tool builds, flows of any pattern, status, cancel (docs/protocol.md)')
    .option('--worker', 'with NATS_URL: also run a worker in this process')
    .addHelpText(
      'after',
      '\nWith NATS_URL set it serves NATS clients and keeps snapshots in NATS KV; without it, it runs embedded\n(in-process bus, microtasks in this process, snapshots under MICROTASK_STATE_DIR). On start it resumes\nevery unfinished flow. SIGINT/SIGTERM: stop taking requests, save, exit 0.',
    )
    .action(async (options: { worker?: boolean }) => {
      setExit(await daemonCommand(options));
    });

  program
    .command('worker')
    .description('take microtasks from the NATS work queue and run them (needs NATS_URL)')
    .addOption(new Option('-c, --concurrency <n>', 'tasks in flight at most (default MICROTASK_WORKER_CONCURRENCY, 8)').argParser(positiveInt('--concurrency')))
    .addHelpText('after', '\nRun as many as you like, on any machines, against the same NATS: they share the queue.')
    .action(async (options: { concurrency?: number }) => {
      setExit(await workerCommand(options));
    });

  return program;
}

/** Runs the CLI; resolves to the exit code instead of exiting, so it can be tested in-process. */
export async function main(argv: string[]): Promise<number> {
  let code: number = ExitCode.ok;
  const program = buildProgram((c) => {
    code = c;
  });
  try {
    await program.parseAsync(argv, { from: 'user' });
    return code;
  } catch (e) {
    if (e instanceof CommanderError) {
      // --help and --version end here with exit code 0; commander has printed what is needed.
      return e.exitCode === 0 ? ExitCode.ok : ExitCode.usage;
    }
    if (e instanceof ConfigError || e instanceof UsageError || e instanceof CassetteError) {
      process.stderr.write(`microtask: ${e.message}\n`);
      return ExitCode.usage;
    }
    if (e instanceof z.ZodError) {
      process.stderr.write(`microtask: invalid input:\n${describeIssues(e)}\n`);
      return ExitCode.usage;
    }
    process.stderr.write(`microtask: unexpected error: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
    return ExitCode.internal;
  }
}
