import { fileURLToPath } from 'node:url';
import { MicrotaskRunner, type AnswerSchemas, type Fallbacks } from './actors/microtask.js';
import { AnthropicModel } from './actors/model/AnthropicModel.js';
import { CassetteRecorder, CassetteReplayModel, loadCassette } from './actors/model/CassetteModel.js';
import type { ModelPort } from './actors/model/ModelPort.js';
import type { PrunableResultsStore } from './persistence/LogResultsStore.js';
import type { Inbox } from './inbox/Inbox.js';
import type { Journal } from './journal/Journal.js';
import type { SnapshotStore } from './persistence/SnapshotStore.js';
import { openEmbeddedState } from './composition.js';
import { LmdbStore } from './persistence/LmdbStore.js';
import type { Config } from './config.js';
import type { Logger } from './log.js';
import { displayUrl } from './secrets.js';
import type { FlowDefinition } from './flowCatalog.js';
import type { Tasks } from './actors/task.js';

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
  /** The state directory's embedded database (request ids; the stores above live in it). */
  db: LmdbStore;
  /** Where the snapshots are, for messages (`ENOSPC: no space left on <where>`). */
  storeLocation: string;
  /** Events sent to flows (`microtask send`, approve, reject), kept until the flow applies them. */
  inbox: Inbox;
  /** The user's flows its hosts know beside the built-ins; unset: the process's module (--flows). */
  flows?: readonly FlowDefinition[];
  /** The tasks its flows run (src/actors/task.ts); unset: the process's module's (--flows). */
  tasks?: Tasks;
  /** Waits for the journal's writes, then releases the database (it closes with this process's last handle). */
  close(): Promise<void>;
  /** `await using runtime = await createRuntime(…)`: closed at the end of the scope. */
  [Symbol.asyncDispose](): Promise<void>;
}

export interface RuntimeRegistry {
  answers?: AnswerSchemas;
  fallbacks?: Fallbacks;
  wrapModel?: (model: ModelPort) => ModelPort;
  /** A program's own flows (the library's orchestrator), instead of the process's module. */
  flows?: readonly FlowDefinition[];
  /** A program's own tasks, with its flows. */
  tasks?: Tasks;
  /** A program's own model, instead of the one the configuration chooses. */
  model?: ModelPort;
}

export async function createRuntime(config: Config, logger: Logger, registry: RuntimeRegistry = {}): Promise<Runtime> {
  const { wrapModel, flows, tasks, model: given, ...answersAndFallbacks } = registry;
  const chosen = given ? { model: given, description: `${given.name}, given by the program` } : await chooseModel(config);
  // Metered (src/ops/metrics.ts) when the daemon serves metrics: the runner calls the model through it.
  const model = wrapModel ? wrapModel(chosen.model) : chosen.model;
  const { description } = chosen;
  logger.info({ model: model.name }, `model: ${description}`);
  // The state directory's database (src/composition.ts): a flow killed mid-way resumes
  // (`microtask resume`) without paying again for the calls it had made.
  const { db, results, store, journal, inbox, resultsOrderedBeforeSaves, close } = await openEmbeddedState(config, logger);
  const runner = new MicrotaskRunner({ model, results, resultsOrderedBeforeSaves, logger, defaultTimeoutMs: config.MICROTASK_TIMEOUT_MS, ...answersAndFallbacks });
  return { config, logger, store, model, modelDescription: description, results, runner, journal, db, inbox, ...(flows ? { flows } : {}), ...(tasks ? { tasks } : {}), storeLocation: db.path, close, [Symbol.asyncDispose]: close };
}
