import { fileURLToPath } from 'node:url';
import { MicrotaskRunner, type AnswerSchemas, type Fallbacks } from './actors/microtask.js';
import { AnthropicModel } from './actors/model/AnthropicModel.js';
import { CassetteRecorder, CassetteReplayModel, loadCassette } from './actors/model/CassetteModel.js';
import type { ModelPort } from './actors/model/ModelPort.js';
import { LogResultsStore, type PrunableResultsStore } from './persistence/LogResultsStore.js';
import { FileJournal } from './journal/FileJournal.js';
import type { Journal, JournalError } from './journal/Journal.js';
import { FileSnapshotStore } from './persistence/FileSnapshotStore.js';
import type { SnapshotStore, SnapshotStoreOptions } from './persistence/SnapshotStore.js';
import { stateDirs } from './runFlow.js';
import type { Config } from './config.js';
import type { Logger } from './log.js';
import { displayUrl } from './secrets.js';

/** The cassette the offline default replays: shipped with the examples, answers written by hand. */
export const OFFLINE_CASSETTE = fileURLToPath(new URL('../examples/offline/cassette.json', import.meta.url));

export interface ModelChoice {
  model: ModelPort;
  /** One line for the start-up log: which model answers, and whether it costs tokens. */
  description: string;
}

/**
 * Which model answers: MICROTASK_CASSETTE (replay) when set; else the Anthropic API when
 * ANTHROPIC_API_KEY is set (recorded to MICROTASK_RECORD when that is set); else the
 * shipped offline cassette, so the quickstart needs no key.
 */
export async function chooseModel(config: Config): Promise<ModelChoice> {
  if (config.MICROTASK_CASSETTE) {
    const cassette = await loadCassette(config.MICROTASK_CASSETTE);
    return {
      model: new CassetteReplayModel(cassette, config.MICROTASK_CASSETTE),
      description: `replaying cassette ${config.MICROTASK_CASSETTE} (${cassette.source}); no tokens spent`,
    };
  }
  if (config.ANTHROPIC_API_KEY) {
    const anthropic = new AnthropicModel({
      apiKey: config.ANTHROPIC_API_KEY,
      baseURL: config.ANTHROPIC_BASE_URL,
      model: config.MICROTASK_MODEL,
      maxTokens: config.MICROTASK_MAX_TOKENS,
      maxRetries: config.MICROTASK_MAX_RETRIES,
      maxRetryWaitMs: config.MICROTASK_MAX_RETRY_WAIT_MS,
    });
    const where = config.ANTHROPIC_BASE_URL ? displayUrl(config.ANTHROPIC_BASE_URL) : 'the Anthropic API';
    if (config.MICROTASK_RECORD) {
      return {
        model: new CassetteRecorder(anthropic, config.MICROTASK_RECORD, `recorded from ${config.MICROTASK_MODEL}`),
        description: `${config.MICROTASK_MODEL} at ${where}, recording to ${config.MICROTASK_RECORD}`,
      };
    }
    return { model: anthropic, description: `${config.MICROTASK_MODEL} at ${where}` };
  }
  const cassette = await loadCassette(OFFLINE_CASSETTE);
  const recordIgnored = config.MICROTASK_RECORD ? '; MICROTASK_RECORD is ignored: there is nothing real to record without a key' : '';
  return {
    model: new CassetteReplayModel(cassette, OFFLINE_CASSETTE),
    description: `offline: no ANTHROPIC_API_KEY, replaying the example cassette (${cassette.source}); set ANTHROPIC_API_KEY for real calls${recordIgnored}`,
  };
}

/** Logs a corrupt snapshot and moves it aside (with its reason), so it never blocks the other flows. */
export function moveAsideOnCorrupt(logger: Logger, store: () => SnapshotStore): SnapshotStoreOptions {
  return {
    onCorrupt: (error) => {
      logger.error({ flowId: error.flowId, reason: error.reason }, 'corrupt snapshot: moved aside');
      void store().moveAside(error.flowId, error.reason).catch(() => undefined);
    },
  };
}

export interface Runtime {
  config: Config;
  logger: Logger;
  /** Where flows' snapshots are saved (under MICROTASK_STATE_DIR in embedded mode). */
  store: SnapshotStore;
  model: ModelPort;
  /** Which model answers, in words: worth telling a person at start. */
  modelDescription: string;
  results: PrunableResultsStore;
  runner: MicrotaskRunner;
  /** Each flow's history (steps, microtasks), for `microtask show` and the inspector. */
  journal: Journal;
}

/** A journal write that failed costs the flow nothing; say so in the logs. */
export const logJournalError = (logger: Logger) => (error: JournalError) =>
  logger.warn({ code: error.code, err: error.cause }, error.message);

export async function createRuntime(
  config: Config,
  logger: Logger,
  registry: { answers?: AnswerSchemas; fallbacks?: Fallbacks } = {},
): Promise<Runtime> {
  const { model, description } = await chooseModel(config);
  logger.info({ model: model.name }, `model: ${description}`);
  // Embedded mode keeps results and snapshots on disk: a flow killed mid-way resumes
  // (`microtask resume`) without paying again for the calls it had made.
  const dirs = stateDirs(config.MICROTASK_STATE_DIR);
  // Appended to a log with one fdatasync per batch; result files of earlier versions are read on a miss.
  const results = new LogResultsStore(dirs.results);
  const store: SnapshotStore = await FileSnapshotStore.open(dirs.flows, moveAsideOnCorrupt(logger, () => store));
  const runner = new MicrotaskRunner({ model, results, logger, defaultTimeoutMs: config.MICROTASK_TIMEOUT_MS, ...registry });
  const journal = new FileJournal({ dir: dirs.journal, onError: logJournalError(logger) });
  return { config, logger, store, model, modelDescription: description, results, runner, journal };
}
