import { readFile } from 'node:fs/promises';
import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import { z } from 'zod';
import { isFlowStopCode, type MicrotaskInput, type MicrotaskResult } from '../contracts/microtask.js';
import { CassetteError } from '../actors/model/CassetteModel.js';
import { describeIssues } from '../actors/model/prompt.js';
import { ConfigError, loadConfig, type Config } from '../config.js';
import { createLogger, type Logger } from '../log.js';
import { connectBus, inboxFor, journalFor, snapshotStore, startDaemonService, startWorkerService } from '../services.js';
import { isPatternName, patternInputSchemas, patternNames, type PatternName } from '../patterns.js';
import { FlowHaltedError, FlowHostError } from '../flowHost.js';
import {
  SnapshotConflictError,
  SnapshotStoreError,
  type FlowSnapshotRecord,
  type FlowSummary,
  type SnapshotStore,
} from '../persistence/SnapshotStore.js';
import { resumeFlow, runFlow, startDetached, toolsDir, type FlowOutput } from '../runFlow.js';
import { createRuntime } from '../runtime.js';
import { ToolSpecSchema } from '../contracts/toolSpec.js';
import type { Usage } from '../contracts/usage.js';
import { ExitCode, UsageError } from './exitCodes.js';
import { readJsonFile } from './readJson.js';
import { assertStateDirectory, assertWritableDirectory } from './directories.js';
import { spawn } from 'node:child_process';
import { openSync } from 'node:fs';
import { join } from 'node:path';
import pc from 'picocolors';
import { fromPromise } from 'xstate';
import { writeToolFiles } from '../actors/toolWriter.js';
import type { FlowDone } from '../daemon/protocol.js';
import { answersWith, fallbacksWith, flowsModuleInUse, provideFlows, useFlowsModule } from '../flows.js';
import { loadFlowsModule } from '../flowsModule.js';
import { InspectorServerError, startInspectorServer, type InspectorServerOptions } from '../inspector/server.js';
import type { Inbox } from '../inbox/Inbox.js';
import { startStatelyInspector } from '../inspector/stately.js';
import type { Journal, JournalEntry } from '../journal/Journal.js';
import { teeJournal } from '../journal/tee.js';
import type { PrunableResultsStore } from '../persistence/LogResultsStore.js';
import type { ModuleRecord, ToolBuilderOutput } from '../machines/toolBuilder.js';
import { renderToolFiles } from '../toolFiles.js';
import type { ToolSpec } from '../contracts/toolSpec.js';
import { DaemonClient } from './busClient.js';
import { colorWanted, progressDisplay, type Progress } from './liveProgress.js';
import { renderHistory } from './show.js';
import { describeStoreStop, formatTokens } from './format.js';
import { isStoreUnavailable } from '../persistence/StoreUnavailableError.js';
import { mkdirs } from '../mkdirs.js';
import { checkRequiredOptions, requiredOption } from './requiredOption.js';
import { isPortTaken } from './ports.js';
import { drainWorker } from './drainWorker.js';
import { devCommand, type DevOptions } from './dev.js';
import { OpsEndpoint } from './opsEndpoint.js';
import { sendCommand, type SendOptions } from './send.js';
import type { FlowWait } from '../flowWaits.js';

const EXIT_CODES_HELP = `
Exit codes:
  0  done
  1  the flow finished without success (failed, fell back, exhausted, over budget, or cancelled)
  2  wrong usage: unknown command or flag, bad input file, bad environment variable, an --out
     or MICROTASK_STATE_DIR that cannot be written, unknown flow, NATS unreachable or refusing
     the credentials, no daemon answering on NATS; the model refused the API key, the
     account has no credit, or the model does not exist (the flow stops at once:
     MODEL_AUTH, MODEL_BILLING, MODEL_NOT_FOUND); or the state directory full or unwritable
     (a flow stops where it stands: \`microtask resume\` it once there is space)
  3  an unexpected error (see the message and the logs)
  130  a second SIGINT/SIGTERM while a daemon or worker was stopping gracefully

Without NATS_URL everything runs in this process (embedded) with state under MICROTASK_STATE_DIR;
with NATS_URL, \`build\`, \`cancel\`, \`send\`, \`approve\`, \`reject\`, \`show\`, \`flows\` and \`inspect\` talk to the daemons on NATS.

Environment: ANTHROPIC_API_KEY (unset: offline cassette), ANTHROPIC_BASE_URL, MICROTASK_MODEL,
MICROTASK_STATE_DIR, MICROTASK_TIMEOUT_MS, MICROTASK_LOG_LEVEL, NATS_URL, NO_COLOR. See the README.`;

/**
 * Progress of a one-shot flow on stderr, unless --no-progress: live on a terminal, lines
 * otherwise. The command says how the flow ended (its cause once), so the progress does not.
 */
const progressFor = (options: { progress?: boolean }): Progress | undefined =>
  options.progress === false ? undefined : progressDisplay({ endSaidByCaller: true });

/** The runtime's journal, also feeding the live progress. */
const journalWith = (journal: Journal, progress: Progress | undefined) => (progress ? teeJournal(journal, (e) => progress.onEntry(e)) : journal);

async function startRuntime(options: { quiet?: boolean } = {}) {
  const config = loadConfig();
  // One-shot commands print progress and a summary; logs are for what went wrong.
  const logger = createLogger(config.MICROTASK_LOG_LEVEL ?? 'error');
  const runtime = await createRuntime(config, logger, { answers: answersWith(), fallbacks: fallbacksWith() });
  if (!options.quiet) process.stderr.write(`model: ${runtime.modelDescription}\n`);
  return runtime;
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
  `${usage.calls} model call${usage.calls === 1 ? '' : 's'}, ${formatTokens(usage.inputTokens, usage.outputTokens)}`;

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
async function prune(store: SnapshotStore, config: Config, logger: Logger, journal?: Journal, results?: PrunableResultsStore) {
  const before = new Date(Date.now() - config.MICROTASK_RETENTION_HOURS * 3_600_000);
  const pruned = await store.prune(before);
  const journals = (await journal?.prune(before)) ?? 0;
  // Results older than the retention: their flows are gone (or would start their calls again).
  const resultFiles = (await results?.prune(before)) ?? 0;
  if (pruned || journals || resultFiles) logger.info({ pruned, journals, resultFiles }, 'old finished flows pruned');
}

function printFlowResult(pattern: string, flowId: string, output: FlowOutput, json: boolean) {
  if (json) printData({ flowId, pattern, ...output });
  else {
    // A flow cancelled or crashed has no machine output: nothing for stdout, the reason on stderr.
    if (output.usage !== undefined) printData(isPatternName(pattern) ? mainResult(pattern, output) : 'result' in output ? output.result : output);
    process.stderr.write(
      `${pattern} ${flowId}: ${output.status}${output.reason ? ` (${output.reason})` : ''}; ${output.usage ? describeUsage(output.usage as Usage) : ''}\n${offlineHint(output)}`,
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
function flowStopped(pattern: string, flowId: string, error: { code: string; message: string } | undefined, json: boolean): number | undefined {
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
async function storeStopped(e: unknown, pattern: string, store: SnapshotStore, json: boolean): Promise<number> {
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

const FLOW_STATUSES = ['running', 'done', 'failed', 'cancelled'] as const;

function parseStatuses(list: string): FlowSummary['status'][] {
  const statuses = list.split(',').map((s) => s.trim());
  const unknown = statuses.filter((s) => !(FLOW_STATUSES as readonly string[]).includes(s));
  if (unknown.length > 0) throw new UsageError(`unknown status ${unknown.join(', ')}: --status takes ${FLOW_STATUSES.join(', ')} (comma-separated)`);
  return statuses as FlowSummary['status'][];
}

async function flowsCommand(options: { json?: boolean; status?: string }) {
  const config = loadConfig();
  const logger = createLogger(config.MICROTASK_LOG_LEVEL ?? 'error');
  const bus = await connectBus(config, logger, 'cli');
  try {
    const store = await snapshotStore(bus, config, logger);
    await prune(store, config, logger);
    const statuses = options.status ? parseStatuses(options.status) : undefined;
    const flows = await store.list(statuses ? { status: statuses } : {});
    if (options.json) printData(flows);
    else if (!flows.length) process.stderr.write(`no flows${statuses ? ` with status ${statuses.join(' or ')}` : ''} in ${bus.transport === 'nats' ? 'NATS KV' : join(config.MICROTASK_STATE_DIR, 'db')}\n`);
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

/** A flow's record; an invalid id or a corrupt record is the user's to fix (exit 2). */
function loadForUser(store: SnapshotStore, flowId: string) {
  return store.load(flowId).catch((e: unknown) => {
    if (e instanceof SnapshotStoreError) throw new UsageError(e.message, e.code);
    throw e;
  });
}

async function showCommand(flowId: string, options: { json?: boolean; verbose?: boolean; snapshots?: boolean; follow?: boolean }) {
  if (options.snapshots && !options.json) throw new UsageError('--snapshots goes with --json (the text history has no room for whole snapshots)');
  const config = loadConfig();
  const logger = createLogger(config.MICROTASK_LOG_LEVEL ?? 'error');
  const bus = await connectBus(config, logger, 'cli');
  try {
    const store = await snapshotStore(bus, config, logger);
    const journal = await journalFor(bus, config, logger);
    const record = (await loadForUser(store, flowId))?.record;
    if (options.follow) return await followFlow(flowId, record, journal, store);
    const entries = await journal.read(flowId);
    if (!record && entries.length === 0) throw new UsageError(`no flow ${flowId}: \`microtask flows\` lists them`, 'FLOW_NOT_FOUND');
    if (options.json) {
      // Snapshots are the bulk of a journal: only with --snapshots.
      const strip = (e: JournalEntry) => (e.kind === 'step' && !options.snapshots ? { ...e, snapshot: undefined } : e);
      printData({ record: record && !options.snapshots ? { ...record, snapshot: undefined } : (record ?? null), entries: entries.map(strip) });
    } else {
      process.stdout.write(`${renderHistory(record, entries, pc.createColors(colorWanted(process.stdout)), options.verbose ?? false)}\n`);
      // What it waits for now, and how to answer: the history ends where the wait began.
      if (record?.status === 'running' && record.waiting?.length) hintAnswer(flowId, record.waiting, process.stdout);
    }
    return ExitCode.ok;
  } finally {
    await bus.close();
  }
}

/** How long `show --follow` waits for a flow's end in the journal once its record says it ended. */
const JOURNAL_CATCH_UP_MS = 3_000;

/** `show --follow`: the live progress of a flow until it ends (or Ctrl-C), from any process. */
async function followFlow(flowId: string, record: FlowSnapshotRecord | undefined, journal: Journal, store: SnapshotStore) {
  if (!record) throw new UsageError(`no flow ${flowId}: \`microtask flows\` lists them`, 'FLOW_NOT_FOUND');
  const progress = progressDisplay();
  let ended: (status: string) => void;
  const end = new Promise<string>((resolve) => (ended = resolve));
  const follow = await journal.follow(flowId, (e) => {
    progress.onEntry(e);
    if (e.kind === 'flow' && e.phase === 'ended') ended(e.status);
  });
  // A flow that ended before the journal saw it (or whose end was not journaled) ends the follow too.
  // The record is saved before the end is journaled, and the journal is read by polling
  // from another process: give it time to deliver the end (and what came before it).
  let grace: NodeJS.Timeout | undefined;
  const poll = setInterval(() => {
    void store.load(flowId).then(
      (s) => {
        if (s && s.record.status !== 'running' && !grace) grace = setTimeout(() => ended(s.record.status), JOURNAL_CATCH_UP_MS);
      },
      () => undefined,
    );
  }, 1_000);
  process.once('SIGINT', () => ended('interrupted'));
  const status = await end;
  clearInterval(poll);
  clearTimeout(grace);
  await follow.stop();
  progress.done();
  return status === 'done' ? ExitCode.ok : status === 'interrupted' ? ExitCode.ok : ExitCode.flowFailed;
}

async function cancelCommand(flowId: string) {
  const config = loadConfig();
  const logger = createLogger(config.MICROTASK_LOG_LEVEL ?? 'error');
  const bus = await connectBus(config, logger, 'cli');
  try {
    if (bus.transport === 'nats') {
      await new DaemonClient(bus, config.MICROTASK_SUBJECT_PREFIX).cancel(flowId);
      process.stderr.write(`cancelled ${flowId}\n`);
      return ExitCode.ok;
    }
    // Embedded: the record says cancelled (compare-and-set). A process running the flow
    // finds its next save refused and stops it there; a resume finds it ended.
    const store = await snapshotStore(bus, config, logger);
    for (;;) {
      const stored = await loadForUser(store, flowId);
      if (!stored) throw new UsageError(`no flow ${flowId}: \`microtask flows\` lists them`, 'FLOW_NOT_FOUND');
      if (stored.record.status !== 'running') throw new UsageError(`flow ${flowId} already ended: ${stored.record.status}`, 'FLOW_FINISHED');
      const error = { code: 'CANCELLED', message: 'cancelled by `microtask cancel`' };
      try {
        await store.save({ ...stored.record, status: 'cancelled', error, updatedAt: new Date().toISOString() }, stored.revision);
      } catch (e) {
        if (e instanceof SnapshotConflictError) continue;
        throw e;
      }
      const journal = await journalFor(bus, config, logger);
      journal.append({ kind: 'flow', flowId, at: new Date().toISOString(), phase: 'ended', pattern: stored.record.pattern, status: 'cancelled', error });
      await journal.close();
      process.stderr.write(`cancelled ${flowId}\n`);
      return ExitCode.ok;
    }
  } finally {
    await bus.close();
  }
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
  try {
    const progress = progressFor(options);
    result = await resumeFlow(runtime, flowId, { journal: journalWith(runtime.journal, progress), onWaiting: hintAnswer }).finally(() => progress?.done());
    await runtime.journal.flush();
  } catch (e) {
    if (e instanceof FlowHostError || e instanceof SnapshotStoreError) throw new UsageError(e.message, e.code);
    const pattern = (await runtime.store.load(flowId).catch(() => undefined))?.record.pattern ?? 'unknown';
    return storeStopped(e, pattern, runtime.store, options.json ?? false);
  }
  if (result.outcome === 'finished') process.stderr.write(`flow ${flowId} had already ended (${result.record.status}); its output:\n`);
  return (
    flowStopped(result.record.pattern, flowId, result.record.error, options.json ?? false) ??
    printFlowResult(result.record.pattern, flowId, result.output, options.json ?? false)
  );
}

async function runCommand(pattern: string, options: { input: string; json?: boolean; out?: string; progress?: boolean; inspect?: boolean }) {
  // A built-in pattern, or a flow of the module given with --flows (MICROTASK_FLOWS).
  const own = flowsModuleInUse().flows.find((flow) => flow.name === pattern);
  if (!isPatternName(pattern) && !own) {
    const names = [...patternNames, ...flowsModuleInUse().flows.map((f) => f.name)].join(', ');
    throw new UsageError(`unknown pattern "${pattern}". Allowed choices are ${names}${flowsModuleInUse().flows.length ? '' : ' (your own flows: --flows <module>)'}`);
  }
  if (options.out !== undefined && pattern !== 'tool-builder') throw new UsageError('--out is for the tool-builder pattern only');
  if (pattern === 'tool-builder') await assertWritableDirectory(options.out ?? toolsDir(loadConfig().MICROTASK_STATE_DIR));
  const schema = isPatternName(pattern) ? patternInputSchemas[pattern] : own!.input;
  const input = await readJsonFile(options.input, schema as z.ZodType<Record<string, unknown>>, `${pattern} input`);
  // Closed when the command returns: its writes committed, its database handle released.
  await using runtime = await startRuntime();
  await prune(runtime.store, runtime.config, runtime.logger, runtime.journal, runtime.results);
  const stately = options.inspect ? await statelyFor(runtime.logger) : undefined;
  const progress = progressFor(options);
  try {
    let ran;
    try {
      ran = await runFlow(runtime, pattern, input, {
        onStarted: hintResumeOnInterrupt,
        onWaiting: hintAnswer,
        outRoot: options.out,
        journal: journalWith(runtime.journal, progress),
        ...(stately ? { inspect: stately.inspect } : {}),
      }).finally(() => progress?.done());
    } catch (e) {
      return await storeStopped(e, pattern, runtime.store, options.json ?? false);
    }
    await runtime.journal.flush();
    return flowStopped(pattern, ran.flowId, ran.record.error, options.json ?? false) ?? printFlowResult(pattern, ran.flowId, ran.output, options.json ?? false);
  } finally {
    stately?.stop();
  }
}

const port = (value: string) => {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0 || n > 65_535) throw new InvalidArgumentError('a port is a whole number from 0 to 65535');
  return n;
};
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

interface BuildOptions {
  out?: string;
  json?: boolean;
  threshold?: number;
  maxCalls?: number;
  maxTokens?: number;
  progress?: boolean;
  detach?: boolean;
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
  let built;
  try {
    built = await runFlow(runtime, 'tool-builder', { spec, ...extra }, {
      outRoot,
      onStarted: hintResumeOnInterrupt,
      journal: journalWith(runtime.journal, progress),
    }).finally(() => progress?.done());
  } catch (e) {
    return storeStopped(e, 'tool-builder', runtime.store, options.json ?? false);
  }
  await runtime.journal.flush();
  return flowStopped('tool-builder', built.flowId, built.record.error, options.json ?? false) ?? printBuildResult(spec.name, built.flowId, built.output, options.json ?? false);
}

function printBuildResult(name: string, flowId: string, output: Record<string, unknown>, json: boolean) {
  if (json) printData({ flowId, pattern: 'tool-builder', ...output });
  else {
    if (output.dir) printData(output.dir);
    const files = ((output.files as string[] | undefined) ?? []).length;
    process.stderr.write(
      `${name} ${flowId}: ${output.status}${output.reason ? ` (${output.reason})` : ''}; ` +
        `${files ? `${files} files written` : 'nothing written'}; ${output.usage ? describeUsage(output.usage as Usage) : ''}\n` +
        (output.dir ? `try it: node ${output.dir}/src/cli.js --help\n` : '') +
        offlineHint(output),
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
    const journal = progress ? await journalFor(bus, config, logger) : undefined;
    const follow = progress && journal ? await journal.follow(flowId, (e) => progress.onEntry(e)) : undefined;
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
    return printBuildResult(spec.name, flowId, output, options.json ?? false);
  } finally {
    await bus.close();
  }
}

/**
 * Runs a service until SIGINT or SIGTERM: then `stop` (take no new work, let what is in
 * flight finish), and exit 0. A second signal exits at once.
 */
async function serveUntilSignal(stop: () => Promise<void>, logger: Logger, what: { stopping: string; abandon: string }): Promise<number> {
  // An embedded daemon has no socket open: without this, Node would find nothing to wait for and exit.
  const keepAlive = setInterval(() => undefined, 1 << 30);
  return new Promise<number>((resolve) => {
    let stopping = false;
    const onSignal = (signal: NodeJS.Signals) => {
      if (stopping) {
        logger.warn({ signal }, `second signal: exiting now (${what.abandon})`);
        process.exit(130);
      }
      stopping = true;
      logger.info({ signal }, `stopping: ${what.stopping} (signal again to exit now)`);
      stop().then(
        () => {
          logger.info('stopped');
          resolve(ExitCode.ok);
        },
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

/** A flow that starts waiting for a person: say for what, until when, and how to answer. */
function hintAnswer(flowId: string, waits: FlowWait[], out: NodeJS.WritableStream = process.stderr) {
  for (const wait of waits) {
    const how = wait.events.includes('review')
      ? `\`microtask approve ${flowId}\` or \`microtask reject ${flowId} --feedback '…'\``
      : wait.events.map((type) => `\`microtask send ${flowId} ${type} --data '{…}'\``).join(' or ');
    const until = wait.until ? ` (until ${wait.until})` : '';
    out.write(`flow ${flowId} waits for ${wait.for}${until}: answer from another terminal with ${how}\n`);
  }
}

interface DaemonOptions {
  worker?: boolean;
  inspect?: boolean;
  inspector?: boolean;
  inspectorPort?: number;
  httpPort?: number;
}

/** Stately's inspector (@statelyai/inspect) for `--inspect`. */
async function statelyFor(logger: Logger) {
  const stately = await startStatelyInspector({ logger }).catch((e: unknown) => {
    throw new UsageError(`--inspect: ${(e as Error).message}`, 'STATELY_INSPECTOR');
  });
  process.stderr.write(`Stately inspector: open ${stately.url} in a browser (it loads Stately's UI from the internet)\n`);
  return stately;
}

/** A daemon's inspector port taken: the user's to fix, in one line (exit 2). */
const inspectorPortTaken = (port: number) =>
  new UsageError(`port ${port} is taken (another daemon serves its inspector there?): choose another with --inspector-port (0: any free port), or --no-inspector`, 'PORT_IN_USE');

async function daemonCommand(options: DaemonOptions) {
  const config = loadConfig();
  const inspectorPort = options.inspectorPort ?? config.MICROTASK_INSPECTOR_PORT;
  // Before anything starts: a daemon refused for its port should not have resumed flows first.
  if (options.inspector !== false && (await isPortTaken(config.MICROTASK_INSPECTOR_HOST, inspectorPort))) throw inspectorPortTaken(inspectorPort);
  const ops = await OpsEndpoint.prepare(config, options.httpPort ?? config.MICROTASK_HTTP_PORT, '--http-port');
  const metrics = ops ? { metrics: ops.metrics } : {};
  const logger = createLogger(config.MICROTASK_LOG_LEVEL ?? 'info');
  const bus = await connectBus(config, logger, 'daemon');
  const stately = options.inspect ? await statelyFor(logger) : undefined;
  // Embedded, microtasks run in the daemon itself; with NATS, on workers (or here with --worker).
  const withWorker = options.worker === true && bus.transport === 'nats';
  const worker = withWorker ? await startWorkerService(bus, config, logger, undefined, metrics) : undefined;
  const daemon = await startDaemonService(bus, config, logger, { ...(stately ? { inspect: stately.inspect } : {}), ...metrics });
  const http = await ops?.serve(bus, logger, '--http-port').catch(async (e: unknown) => {
    await Promise.all([daemon.stop(0), worker?.stop()]);
    stately?.stop();
    await bus.close();
    throw e;
  });
  const inspector =
    options.inspector === false
      ? undefined
      : await serveInspector(daemon.parts, config, logger, inspectorPort).catch(async (e: unknown) => {
          if (e instanceof InspectorServerError && e.code === 'INSPECTOR_PORT_IN_USE') {
            // Taken since the check above: undo the start, then refuse as the check would have.
            await Promise.all([daemon.stop(0), worker?.stop()]);
            stately?.stop();
            await bus.close();
            throw inspectorPortTaken(inspectorPort);
          }
          // The daemon is worth running without its page: say why there is none.
          logger.error({ err: e }, `inspector page not served: ${(e as Error).message}`);
          return undefined;
        });
  const where = bus.transport === 'nats' ? `NATS ${config.NATS_URL!.join(', ')}` : 'embedded (no NATS_URL): requests from this process only';
  logger.info({ transport: bus.transport, worker: withWorker, inspector: inspector?.url, http }, `daemon ready: ${where}`);
  const grace = config.MICROTASK_SHUTDOWN_GRACE_MS;
  return serveUntilSignal(async () => {
    // /readyz answers 503 from here on, until the process exits.
    ops?.drain();
    await inspector?.close();
    // Embedded, the microtasks run here: they get the grace period to finish. With NATS they
    // run on workers, which store each result for the flow whatever the daemon does: its
    // flows stop at once (resumed on the next start, or by another daemon), and a worker in
    // this process drains like any other.
    await Promise.all([daemon.stop(bus.transport === 'nats' ? 0 : grace), worker ? drainWorker(worker, grace, logger) : undefined]);
    stately?.stop();
    await bus.close();
    await ops?.close();
  }, logger, {
    stopping:
      bus.transport === 'nats'
        ? `no new requests; flows saved to resume (their microtasks stay with the workers)${withWorker ? '; the worker here finishes its tasks in flight' : ''}`
        : `no new requests; the microtasks in flight get ${grace} ms to finish, then every flow is saved`,
    abandon: 'every flow is saved as of its last step: the next start resumes it',
  });
}

/** The inspector page of the daemon (or of `microtask inspect`), where the config says. */
async function serveInspector(
  parts: { store: SnapshotStore; journal?: Journal | undefined; flows: ReturnType<typeof provideFlows>; inbox: Inbox; running?: InspectorServerOptions['running'] },
  config: Config,
  logger: Logger,
  port: number,
) {
  if (!parts.journal) throw new Error('no journal to show');
  const { journal, store, flows, inbox, running } = parts;
  const token = config.MICROTASK_INSPECTOR_TOKEN;
  const server = await startInspectorServer({ journal, store, flows, inbox, ...(running ? { running } : {}), ...(token ? { token } : {}), logger, host: config.MICROTASK_INSPECTOR_HOST, port });
  return server;
}

async function workerCommand(options: { concurrency?: number; httpPort?: number }) {
  const config = loadConfig();
  if (!config.NATS_URL) {
    throw new UsageError('a worker takes tasks from NATS: set NATS_URL (an embedded `microtask daemon` runs its own worker)');
  }
  const ops = await OpsEndpoint.prepare(config, options.httpPort ?? config.MICROTASK_HTTP_PORT, '--http-port');
  const logger = createLogger(config.MICROTASK_LOG_LEVEL ?? 'info');
  const bus = await connectBus(config, logger, 'worker');
  const worker = await startWorkerService(
    bus,
    options.concurrency ? { ...config, MICROTASK_WORKER_CONCURRENCY: options.concurrency } : config,
    logger,
    undefined,
    ops ? { metrics: ops.metrics } : {},
  );
  const http = await ops?.serve(bus, logger, '--http-port').catch(async (e: unknown) => {
    await worker.stop();
    await bus.close();
    throw e;
  });
  if (http) logger.info({ http }, `worker health and metrics on ${http}`);
  return serveUntilSignal(async () => {
    ops?.drain();
    await drainWorker(worker, config.MICROTASK_SHUTDOWN_GRACE_MS, logger);
    await bus.close();
    await ops?.close();
  }, logger, {
    stopping: `no new tasks; those in flight get ${config.MICROTASK_SHUTDOWN_GRACE_MS} ms to finish, then go back to the queue`,
    abandon: 'tasks in flight go back to the queue when their ack wait runs out, for another worker',
  });
}

/** `microtask inspect`: the inspector page over the flows of this mode, without running a daemon. */
async function inspectCommand(flowId: string | undefined, options: { port?: number }) {
  const config = loadConfig();
  const logger = createLogger(config.MICROTASK_LOG_LEVEL ?? 'warn');
  const bus = await connectBus(config, logger, inspectorRole(config));
  const store = await snapshotStore(bus, config, logger);
  const journal = await journalFor(bus, config, logger);
  // The machines' definitions only: nothing here runs a microtask.
  const flows = provideFlows({ microtask: fromPromise<MicrotaskResult, MicrotaskInput>(() => Promise.reject(new Error('the inspector runs no microtask'))) });
  // Answers from the page go where `microtask send` puts them: the daemon or `run` applies them.
  const inbox = await inboxFor(bus, config, logger);
  const server = await serveInspector({ journal, store, flows, inbox }, config, logger, options.port ?? config.MICROTASK_INSPECTOR_PORT).catch(async (e: unknown) => {
    if (e instanceof InspectorServerError && e.code === 'INSPECTOR_PORT_IN_USE') {
      throw new UsageError(`port ${options.port ?? config.MICROTASK_INSPECTOR_PORT} is taken (a daemon serves its inspector there already?): choose another with --port`, 'PORT_IN_USE');
    }
    if (e instanceof InspectorServerError && e.code === 'INSPECTOR_TOKEN_REQUIRED') {
      await bus.close();
      throw new UsageError(e.message, e.code);
    }
    throw e;
  });
  // The token (if any) rides in the fragment: printed here, kept out of the logs.
  printData(server.pageUrl(flowId));
  process.stderr.write(`inspector serving ${bus.transport === 'nats' ? 'the flows on NATS' : `the flows under ${config.MICROTASK_STATE_DIR}`}; Ctrl-C to stop\n`);
  return serveUntilSignal(async () => {
    await server.close();
    await bus.close();
  }, logger, { stopping: 'closing the inspector', abandon: 'it only reads' });
}

/** Whether the command keeps (or reads) anything under MICROTASK_STATE_DIR. */
function usesStateDirectory(command: string, options: { out?: string; detach?: boolean }, config: Config): boolean {
  switch (command) {
    case 'run':
      return true;
    case 'daemon':
      // Embedded: every store. With NATS: the tools its builds write.
      return true;
    case 'build':
      // With NATS the tool is written here: under the state directory unless --out says elsewhere.
      return !config.NATS_URL || (options.out === undefined && !options.detach);
    case 'resume':
    case 'flows':
    case 'show':
    case 'cancel':
    case 'inspect':
      return !config.NATS_URL;
    default:
      return false;
  }
}

/** The inspector is a long-running reader: it waits for NATS like a service. */
const inspectorRole = (config: Config) => (config.NATS_URL ? 'inspector' : 'cli');

export function buildProgram(setExit: (code: number) => void): Command {
  const program = new Command('microtask')
    .description('Run AI microtasks and the flows made of them: timeouts, fallbacks, structured answers, durable state.')
    .version('0.1.0')
    .showHelpAfterError('(run with --help for usage)')
    .addHelpText('after', EXIT_CODES_HELP)
    .exitOverride();

  // A MICROTASK_STATE_DIR that cannot be used would fail deep in a store's mkdir (a stack
  // trace), or only when a paid build writes its tool: every command that keeps something
  // there checks it first.
  program.hook('preAction', async (_program, command) => {
    checkRequiredOptions(command);
    const config = loadConfig();
    if (usesStateDirectory(command.name(), command.opts(), config)) await assertStateDirectory(config.MICROTASK_STATE_DIR);
    // A user's flows (--flows or MICROTASK_FLOWS), for every command that runs, resumes, shows or answers flows.
    const flowsModule = (command.opts() as { flows?: string }).flows ?? (process.env.MICROTASK_FLOWS?.trim() || undefined);
    if (flowsModule !== undefined && command.options.some((o) => o.long === '--flows')) useFlowsModule(await loadFlowsModule(flowsModule));
  });
  /** The commands that run, resume or answer flows take a user's module of flows. */
  const flowsOption = () => new Option('--flows <module>', "your own flows: an ES module exporting `flows` (and `answers`, `fallbacks`); default MICROTASK_FLOWS");

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

Inputs are checked against each pattern's schema (src/patterns.ts); examples/ has one per pattern.`,
    )
    .action(async (pattern: string, options: Parameters<typeof runCommand>[1]) => {
      setExit(await runCommand(pattern, options));
    });

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
    .command('show')
    .description("a flow's history: each transition and microtask, with tokens and durations")
    .argument('<flowId>', 'the flow, as `microtask flows` lists it')
    .option('--json', 'print the record and the journal entries as JSON')
    .option('-v, --verbose', "also print each microtask's prompt and answer")
    .option('--snapshots', 'with --json: include the snapshot saved at each step')
    .option('-f, --follow', 'follow the flow live until it ends (Ctrl-C stops following, not the flow)')
    .action(async (flowId: string, options: Parameters<typeof showCommand>[1]) => {
      setExit(await showCommand(flowId, options));
    });

  program
    .command('cancel')
    .description('cancel a running flow (with NATS_URL: the daemon running it stops it)')
    .argument('<flowId>', 'the flow, as `microtask flows` lists it')
    .addHelpText('after', '\nA cancelled flow ends with status `cancelled` and cannot be resumed. Exit 2 when it is unknown or has ended.')
    .action(async (flowId: string) => {
      setExit(await cancelCommand(flowId));
    });

  program
    .command('send')
    .description('send an event to a flow that waits for one (a person\'s answer, an outside event)')
    .argument('<flowId>', 'the flow, as `microtask flows` lists it')
    .argument('<event>', 'the event type the flow waits for (`microtask show <flowId>` says which)')
    .option('--data <json>', 'the event\'s data, JSON (e.g. \'{"score":0.9,"feedback":"…"}\')')
    .option('--id <eventId>', 'an id that makes sending again harmless (default: a new one)')
    .addOption(flowsOption())
    .addHelpText(
      'after',
      '\nChecked against what the flow waits for now, then kept: the process running the flow applies it\n' +
        'at once, or the flow\'s resume does. Exit 2 when the flow waits for no such event or the data is wrong.',
    )
    .action(async (flowId: string, event: string, options: SendOptions) => {
      setExit(await sendCommand(flowId, event, options));
    });

  for (const [name, approved] of [['approve', true], ['reject', false]] as const) {
    program
      .command(name)
      .description(`${approved ? 'approve' : 'reject'} what a flow waiting for a person's review shows (the reentrant pipeline's personReview, the tool builder's approval)`)
      .argument('<flowId>', 'the flow, as `microtask flows` lists it')
      .option('--feedback <text>', approved ? 'a note for the record' : 'what to change: the next pass gets it')
      .option('--id <eventId>', 'an id that makes sending again harmless (default: a new one)')
      .addOption(flowsOption())
      .addHelpText('after', `\nSends the event \`review\` with {"approved": ${approved}, "feedback": …}; a feedback loop waiting for a score takes\n\`microtask send <flowId> score --data '{"score":0.9,"feedback":"…"}'\`.`)
      .action(async (flowId: string, options: { feedback?: string; id?: string }) => {
        const data = JSON.stringify({ approved, feedback: options.feedback ?? '' });
        setExit(await sendCommand(flowId, 'review', { data, ...(options.id ? { id: options.id } : {}) }));
      });
  }

  program
    .command('inspect')
    .description('serve the inspector page on localhost over the flows of this mode, and print its URL')
    .argument('[flowId]', 'print the URL of this flow')
    .addOption(new Option('--port <n>', 'listen on this port (default MICROTASK_INSPECTOR_PORT, 7420; 0 = any free)').argParser(port))
    .addOption(flowsOption())
    .addHelpText(
      'after',
      '\nThe daemon serves the same page (on MICROTASK_INSPECTOR_PORT); this is for flows run with `microtask run`\nor `build`, or to look at NATS flows from another machine. It needs no internet.',
    )
    .action(async (flowId: string | undefined, options: { port?: number }) => {
      setExit(await inspectCommand(flowId, options));
    });

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

  program
    .command('daemon')
    .description('serve the bus protocol: tool builds, flows of any pattern, status, cancel (docs/protocol.md)')
    .option('--worker', 'with NATS_URL: also run a worker in this process')
    .addOption(flowsOption())
    .option('--inspect', "send every flow's actors to Stately's inspector (@statelyai/inspect)")
    .addOption(new Option('--inspector-port <n>', 'serve the inspector page on this port (default MICROTASK_INSPECTOR_PORT, 7420)').argParser(port))
    .option('--no-inspector', 'do not serve the inspector page')
    .addOption(new Option('--http-port <n>', 'serve /healthz, /readyz and /metrics on this port (default MICROTASK_HTTP_PORT; unset: not served)').argParser(port))
    .addHelpText(
      'after',
      `
With NATS_URL set it serves NATS clients and keeps snapshots in NATS KV; without it, it runs embedded
(in-process bus, microtasks in this process, snapshots under MICROTASK_STATE_DIR). On start it resumes
every unfinished flow. It serves the inspector page on http://MICROTASK_INSPECTOR_HOST:PORT (127.0.0.1:7420).

SIGINT/SIGTERM: stop taking requests, let the microtasks in flight finish (MICROTASK_SHUTDOWN_GRACE_MS,
20 s), save every flow, close the connection, exit 0. A second signal exits at once (exit 130): the
snapshots make that safe, and a restart resumes the flows.`,
    )
    .action(async (options: DaemonOptions) => {
      setExit(await daemonCommand(options));
    });

  program
    .command('worker')
    .description('take microtasks from the NATS work queue and run them (needs NATS_URL)')
    .addOption(new Option('-c, --concurrency <n>', 'tasks in flight at most (default MICROTASK_WORKER_CONCURRENCY, 8)').argParser(positiveInt('--concurrency')))
    .addOption(flowsOption())
    .addOption(new Option('--http-port <n>', 'serve /healthz, /readyz and /metrics on this port (default MICROTASK_HTTP_PORT; unset: not served)').argParser(port))
    .addHelpText(
      'after',
      '\nRun as many as you like, on any machines, against the same NATS: they share the queue.\nSIGINT/SIGTERM: take no new task, finish those in flight (MICROTASK_SHUTDOWN_GRACE_MS), exit 0.',
    )
    .action(async (options: { concurrency?: number; httpPort?: number }) => {
      setExit(await workerCommand(options));
    });

  program
    .command('dev')
    .description('the whole local stack: a nats-server, the daemon, a worker and the inspector; Ctrl-C stops them')
    .addOption(new Option('--nats-port <n>', 'nats-server listens on this port of 127.0.0.1 (default: a free one)').argParser(port))
    .addOption(flowsOption())
    .addOption(new Option('--inspector-port <n>', 'serve the inspector page on this port (default MICROTASK_INSPECTOR_PORT, 7420; 0 = any free)').argParser(port))
    .addHelpText(
      'after',
      `
nats-server comes from NATS_SERVER_BIN, PATH or /usr/sbin (\`apt-get install nats-server\`, or a release from
https://github.com/nats-io/nats-server/releases); its JetStream store is $MICROTASK_STATE_DIR/nats, so flows
outlive a restart. Clients connect to the NATS URL it prints, e.g. NATS_URL=<it> microtask build <spec.json>.`,
    )
    .action(async (options: DevOptions) => {
      setExit(await devCommand(options));
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
    // A store that refused before any flow started (opening the state directory's database on a full disk).
    if (isStoreUnavailable(e)) {
      process.stderr.write(`microtask: ${describeStoreStop({ cause: e.message })}\n`);
      return ExitCode.storeUnavailable;
    }
    if (e instanceof z.ZodError) {
      process.stderr.write(`microtask: invalid input:\n${describeIssues(e)}\n`);
      return ExitCode.usage;
    }
    process.stderr.write(`microtask: unexpected error: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
    return ExitCode.internal;
  }
}
