import { ClientError } from '../client.js';
import { ConfigError } from '../config.js';
import type { FlowEvent, FlowStatus } from '../contracts/flowEvents.js';
import { ProtocolError, type FlowRecord } from '../daemon/protocol.js';
import { FlowDefinitionError } from '../flowCatalog.js';
import { FlowHaltedError, FlowHostError } from '../flowHost.js';
import { EventRefusedError } from '../flowWaits.js';
import { SnapshotStoreError, type FlowSummary } from '../persistence/SnapshotStore.js';
import { StoreUnavailableError } from '../persistence/StoreUnavailableError.js';
import { SendError } from '../sendEvent.js';
import { UsageError } from '../UsageError.js';
import type { ModelPort } from '../actors/model/ModelPort.js';
import type { NatsBusOptions } from '../bus/NatsBus.js';
import type { FlowDefinition, FlowsModule } from '../flowCatalog.js';
import type { Logger } from '../log.js';

export type { FlowEvent, FlowRecord, FlowStatus, FlowSummary };

/**
 * The orchestrator a program embeds: the same calls whether its flows run in this process
 * (a state directory) or on daemons and workers over NATS. Built by `createOrchestrator`.
 */
export interface Orchestrator {
  /** Which of the two this is: `embedded` (flows run here) or `nats` (on the daemons). */
  readonly mode: 'embedded' | 'nats';
  /**
   * Starts a flow of a built-in pattern or of the program's flows; resolves with its id
   * once its first step is saved. The same requestId and input answer the same flow (a
   * retry is safe). UNKNOWN_PATTERN, INVALID_INPUT, REQUEST_ID_CONFLICT.
   */
  start(flowName: string, input: unknown, options?: { requestId?: string }): Promise<string>;
  /** The flow's record (status, state, output or error, what it waits for); undefined when there is none. */
  get(flowId: string): Promise<FlowRecord | undefined>;
  /** The flows kept, oldest first, without their snapshots. */
  list(filter?: { status?: FlowStatus | readonly FlowStatus[] }): Promise<FlowSummary[]>;
  /** Cancels a running flow (it ends `cancelled`). FLOW_NOT_FOUND, FLOW_FINISHED. */
  cancel(flowId: string): Promise<void>;
  /**
   * Sends what a flow waits for (a person's answer): checked against its wait, kept, and
   * applied by whoever runs the flow. An eventId makes a retry safe (`duplicate`).
   * FLOW_NOT_FOUND, FLOW_FINISHED, EVENT_NOT_ACCEPTED, INVALID_EVENT, WAIT_EXPIRED.
   */
  send(flowId: string, event: { type: string; data?: unknown; eventId?: string }): Promise<{ eventId: string; duplicate: boolean }>;
  /**
   * The flow's transitions in seq order, each once, ending with its end (the event whose
   * status is not `running`). Over NATS from its first (the stream keeps them); embedded,
   * from what this orchestrator saw (from the start, or from where it resumed the flow).
   * FLOW_NOT_FOUND.
   */
  events(flowId: string): AsyncIterable<FlowEvent>;
  /** Resolves with the flow's final record once it has ended (at once when it has). FLOW_NOT_FOUND. */
  done(flowId: string): Promise<FlowRecord>;
  /**
   * Embedded: stops the flows here (saved, resumed by the next orchestrator or daemon on
   * the state directory) and closes the stores. NATS: closes the connection. Calls after
   * it fail with CLOSED. Until then the process stays up, as with any open connection.
   */
  close(): Promise<void>;
  [Symbol.asyncDispose](): Promise<void>;
}

/** Flows run in this process, kept in a state directory: what `microtask run` builds, hosting many flows. */
export interface EmbeddedOrchestratorOptions {
  /** Where flows, results, the journal and sent events are kept (MICROTASK_STATE_DIR); shared with the CLI. */
  stateDir: string;
  /** The program's flows beside the built-in patterns: definitions, or a module of flows, answer schemas and fallbacks. */
  flows?: readonly FlowDefinition[] | FlowsModule;
  /** The model microtasks call; unset: chosen from `env` as the CLI does (ANTHROPIC_API_KEY, MICROTASK_CASSETTE, else offline). */
  model?: ModelPort;
  /** The configuration variables (docs: Configuration); process.env unless given. `stateDir` wins over MICROTASK_STATE_DIR. */
  env?: Record<string, string | undefined>;
  /** Where it logs (pino); unset: nowhere. */
  logger?: Logger;
  natsUrl?: never;
}

/** Flows run by the daemons and workers on a NATS server: nothing runs in this process. */
export interface NatsOrchestratorOptions extends Pick<NatsBusOptions, 'token' | 'user' | 'pass' | 'nkeySeed' | 'credsFile' | 'tls' | 'name'> {
  /** `nats://host:4222`, or several servers of a cluster. */
  natsUrl: string | readonly string[];
  /** The daemons' MICROTASK_SUBJECT_PREFIX; `microtask` by default. */
  subjectPrefix?: string;
  /** How long a request waits for a daemon's answer; 10 s by default (then TIMEOUT). */
  timeoutMs?: number;
  stateDir?: never;
}

export type OrchestratorOptions = EmbeddedOrchestratorOptions | NatsOrchestratorOptions;

/**
 * Why a call failed, with the code the rest of the project gives it: the protocol's
 * (UNKNOWN_PATTERN, INVALID_INPUT, FLOW_NOT_FOUND, FLOW_FINISHED, REQUEST_ID_CONFLICT,
 * EVENT_NOT_ACCEPTED, INVALID_EVENT, WAIT_EXPIRED, STALE_EVENT, INTERNAL), the client's
 * (NO_DAEMON, TIMEOUT, BAD_REPLY), STORE_UNAVAILABLE, FLOW_NOT_DEFINED,
 * INCOMPATIBLE_SNAPSHOT, CONFIG_INVALID, INVALID_FLOW_DEFINITION, NATS_UNREACHABLE, and
 * this object's own: INVALID_OPTIONS, CLOSED.
 */
export class OrchestratorError extends Error {
  override readonly name = 'OrchestratorError';
  constructor(
    readonly code: OrchestratorErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

export type OrchestratorErrorCode =
  | 'UNKNOWN_PATTERN'
  | 'INVALID_INPUT'
  | 'FLOW_NOT_FOUND'
  | 'FLOW_FINISHED'
  | 'REQUEST_ID_CONFLICT'
  | 'EVENT_NOT_ACCEPTED'
  | 'INVALID_EVENT'
  | 'WAIT_EXPIRED'
  | 'STALE_EVENT'
  | 'NO_DAEMON'
  | 'TIMEOUT'
  | 'BAD_REPLY'
  | 'STORE_UNAVAILABLE'
  | 'INVALID_OPTIONS'
  | 'CLOSED'
  | 'INTERNAL'
  | (string & {});

/** Errors with a code of their own keep it (their message and cause too); anything else goes through as it is. */
export function asOrchestratorError(e: unknown): unknown {
  if (e instanceof OrchestratorError) return e;
  if (
    e instanceof ClientError ||
    e instanceof ProtocolError ||
    e instanceof FlowHostError ||
    e instanceof SendError ||
    e instanceof EventRefusedError ||
    e instanceof StoreUnavailableError ||
    e instanceof FlowHaltedError ||
    e instanceof ConfigError ||
    e instanceof FlowDefinitionError ||
    e instanceof UsageError
  ) {
    return new OrchestratorError(e.code, e.message, { cause: e });
  }
  // A malformed flow id is no flow (as the daemon answers it); a corrupt record keeps SNAPSHOT_CORRUPT.
  if (e instanceof SnapshotStoreError) return new OrchestratorError(e.code === 'INVALID_FLOW_ID' ? 'FLOW_NOT_FOUND' : e.code, e.message, { cause: e });
  return e;
}

/** Runs a call, its failure given the orchestrator's error. */
export async function coded<T>(call: () => Promise<T>): Promise<T> {
  try {
    return await call();
  } catch (e) {
    throw asOrchestratorError(e);
  }
}
