/** The public surface: the model port and its implementations, the microtask actor, configuration. */
export type { ModelPort, ModelRequest, ModelResponse } from './actors/model/ModelPort.js';
export { ModelError, isModelError, type ModelErrorKind } from './actors/model/ModelError.js';
export { AnthropicModel, type AnthropicModelOptions } from './actors/model/AnthropicModel.js';
export { ScriptedModel, type Script, type ScriptedAnswer } from './actors/model/ScriptedModel.js';
export { CassetteRecorder, CassetteReplayModel, loadCassette, CassetteError } from './actors/model/CassetteModel.js';
export {
  MicrotaskRunner,
  createMicrotaskLogic,
  defaultFallback,
  type AnswerSchemas,
  type Fallback,
  type Fallbacks,
  type MicrotaskDeps,
} from './actors/microtask.js';
export {
  MicrotaskInputSchema,
  MicrotaskResultSchema,
  type MicrotaskInput,
  type MicrotaskResult,
  type MicrotaskError,
  type MicrotaskErrorKind,
} from './contracts/microtask.js';
export { MemoryResultsStore, ResultsUnavailableError, type ResultsStore } from './actors/ResultsStore.js';
// The failures a program switches on (`code` STORE_UNAVAILABLE): a flow stopped, resumable, not failed.
export { StoreUnavailableError, isStoreUnavailable } from './persistence/StoreUnavailableError.js';
export { FlowHaltedError } from './flowHost.js';
export { loadConfig, ConfigError, EnvSchema, type Config } from './config.js';
export { addUsage, zeroUsage, totalTokens, type Usage } from './contracts/usage.js';
// Your own flows (README, "Your own flow"): a definition the daemon, the workers and the CLI load with --flows.
export { defineFlow, FlowDefinitionError, type FlowDefinition, type FlowBlocks, type FlowsModule } from './flowCatalog.js';
export { loadFlowsModule, FlowsModuleError, type FlowsModuleErrorCode } from './flowsModule.js';
// A module's own deterministic steps (`export const tasks = { name: defineTask({ input, run }) }`), run by FlowBlocks.task.
export { defineTask, TaskRunner, createTaskLogic, type TaskDefinition, type TaskContext, type Tasks, type TaskDeps } from './actors/task.js';
export { TaskInputSchema, type TaskInput } from './contracts/task.js';
// Embedding the orchestrator (README): start, get, list, cancel, send, events, done, close; in this process or over NATS.
export {
  createOrchestrator,
  OrchestratorError,
  type Orchestrator,
  type OrchestratorOptions,
  type EmbeddedOrchestratorOptions,
  type NatsOrchestratorOptions,
  type OrchestratorErrorCode,
  type FlowEvent,
  type FlowRecord,
  type FlowStatus,
  type FlowSummary,
} from './orchestrator.js';
