import { EmbeddedOrchestrator } from './orchestrator/embedded.js';
import { NatsOrchestrator } from './orchestrator/nats.js';
import { OrchestratorError, type Orchestrator, type OrchestratorOptions } from './orchestrator/Orchestrator.js';

export {
  OrchestratorError,
  type EmbeddedOrchestratorOptions,
  type FlowEvent,
  type FlowRecord,
  type FlowStatus,
  type FlowSummary,
  type NatsOrchestratorOptions,
  type Orchestrator,
  type OrchestratorErrorCode,
  type OrchestratorOptions,
} from './orchestrator/Orchestrator.js';

/**
 * The orchestrator a program embeds (README, "Embedding the orchestrator"). The one place
 * the library decides where flows run: `stateDir` runs them in this process, durably, as
 * `microtask run` does (flows left unfinished there are resumed now); `natsUrl` sends every
 * call to the daemons on that NATS server (run `microtask daemon` and `microtask worker`).
 */
export async function createOrchestrator(options: OrchestratorOptions): Promise<Orchestrator> {
  const given = (options ?? {}) as { stateDir?: unknown; natsUrl?: unknown };
  const embedded = given.stateDir !== undefined;
  const nats = given.natsUrl !== undefined;
  if (embedded === nats) {
    throw new OrchestratorError(
      'INVALID_OPTIONS',
      embedded ? 'stateDir or natsUrl, not both: flows run in this process or on the daemons' : 'stateDir (flows run in this process) or natsUrl (on the daemons over NATS)',
    );
  }
  return embedded ? EmbeddedOrchestrator.open(options as Extract<OrchestratorOptions, { stateDir: string }>) : NatsOrchestrator.open(options as Extract<OrchestratorOptions, { natsUrl: unknown }>);
}
