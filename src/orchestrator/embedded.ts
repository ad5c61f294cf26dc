import { randomUUID } from 'node:crypto';
import type { z } from 'zod';
import { loadConfig } from '../config.js';
import type { FlowEvent } from '../contracts/flowEvents.js';
import type { KeptEvent } from '../contracts/waits.js';
import type { FlowRecord } from '../daemon/protocol.js';
import { FlowSendRequestSchema } from '../daemon/protocol.js';
import { publicRecord } from '../daemon/flowRecord.js';
import { claimRequest, type RequestIds } from '../daemon/requestClaims.js';
import type { FlowDefinition, FlowsModule } from '../flowCatalog.js';
import { newFlowId, type FlowHost } from '../flowHost.js';
import { answersWith, fallbacksWith, tasksWith, type Flows } from '../flows.js';
import type { LiveWait } from '../flowWaits.js';
import { MAX_JSON_DEPTH, depthExceeds } from '../jsonInput.js';
import { silentLogger } from '../log.js';
import { FlowStatusSchema, SnapshotConflictError, isValidFlowId, type FlowSnapshotRecord } from '../persistence/SnapshotStore.js';
import { flowsOf, hostFor } from '../runFlow.js';
import { createRuntime, type Runtime } from '../runtime.js';
import { sendEvent } from '../sendEvent.js';
import { FlowFeed, inOrder } from './flowFeed.js';
import { asOrchestratorError, coded, OrchestratorError, type EmbeddedOrchestratorOptions, type Orchestrator } from './Orchestrator.js';

/** How often a flow another process runs (on the same state directory) is looked at, for `events` and `done`. */
const POLL_MS = 250;

/**
 * The orchestrator of embedded mode: the runtime `microtask run` builds (the state
 * directory's database: snapshots, results, journal, inbox; the model; the microtask
 * runner) and one FlowHost for every flow, as a daemon has. At creation it resumes the
 * flows left unfinished there; events sent from other processes (`microtask send`) reach
 * the flows through the inbox, as they reach a daemon's.
 */
export class EmbeddedOrchestrator implements Orchestrator {
  readonly mode = 'embedded' as const;
  private readonly feed: FlowFeed;
  private following: { stop(): Promise<void> } | undefined;
  private keepAlive: NodeJS.Timeout | undefined;
  private closed: Promise<void> | undefined;
  /** Rejects with CLOSED when `close` is called: what every wait races against. */
  private readonly closing: Promise<never>;
  private rejectClosing!: (e: unknown) => void;

  private constructor(
    private readonly runtime: Runtime,
    private readonly flows: Flows,
    private readonly host: FlowHost,
    feed: FlowFeed,
  ) {
    this.feed = feed;
    this.closing = new Promise<never>((_, reject) => (this.rejectClosing = reject));
    this.closing.catch(() => undefined);
  }

  static async open(options: EmbeddedOrchestratorOptions): Promise<EmbeddedOrchestrator> {
    if (typeof options.stateDir !== 'string' || options.stateDir.trim() === '') {
      throw new OrchestratorError('INVALID_OPTIONS', 'stateDir: the directory to keep flows in (or natsUrl, for the daemons on NATS)');
    }
    const module = moduleOf(options.flows);
    const logger = options.logger ?? silentLogger;
    const config = await coded(async () => loadConfig({ ...(options.env ?? process.env), MICROTASK_STATE_DIR: options.stateDir }));
    const runtime = await coded(() =>
      createRuntime(config, logger, {
        answers: answersWith(module),
        fallbacks: fallbacksWith(module),
        flows: module.flows,
        tasks: tasksWith(module),
        ...(options.model ? { model: options.model } : {}),
      }),
    );
    let orchestrator: EmbeddedOrchestrator | undefined;
    try {
      const flows = await coded(async () => flowsOf(runtime));
      const feed = new FlowFeed();
      const host = hostFor(runtime, { flows, onEvent: async (event) => feed.announce(event) });
      orchestrator = new EmbeddedOrchestrator(runtime, flows, host, feed);
      await orchestrator.begin();
      return orchestrator;
    } catch (e) {
      // The state directory released (and what began of the orchestrator stopped): a retry can open it.
      await (orchestrator ? orchestrator.close() : runtime.close()).catch(() => undefined);
      throw asOrchestratorError(e);
    }
  }

  /** As a daemon starts: follows the inbox (before resuming, so no event falls between), then resumes the unfinished flows. */
  private async begin() {
    const { host, runtime } = this;
    this.following = await runtime.inbox.follow((flowId, event) => {
      host.send(flowId, event).catch((e: unknown) => runtime.logger.warn({ flowId, eventId: event.eventId, err: e }, (e as Error).message));
    });
    const { resumed, failed } = await host.resumeAll();
    if (resumed.length || failed.length) runtime.logger.info({ resumed: resumed.length, failed: failed.length }, 'unfinished flows resumed');
    // A flow that waits for a person holds no timer or socket: the process stays up for it until close, as a connection would keep it.
    this.keepAlive = setInterval(() => undefined, 2 ** 30);
  }

  start(flowName: string, input: unknown, options: { requestId?: string } = {}): Promise<string> {
    return this.call(async () => {
      const definition = this.flows.catalog.definition(flowName);
      if (!definition) throw new OrchestratorError('UNKNOWN_PATTERN', `no flow ${JSON.stringify(flowName)}; one of: ${this.flows.catalog.names().join(', ')}`);
      const { requestId } = options;
      if (requestId !== undefined && (typeof requestId !== 'string' || requestId.length < 1 || requestId.length > 200)) {
        throw new OrchestratorError('INVALID_INPUT', 'requestId: a string of 1 to 200 characters');
      }
      const parsed = definition.input.safeParse(asJson(input, `the ${flowName} input`));
      if (!parsed.success) throw new OrchestratorError('INVALID_INPUT', `invalid ${flowName} input: ${oneLine(parsed.error)}`);
      const flowInput = parsed.data as Record<string, unknown>;
      const flowId = newFlowId(flowName);
      // As the daemon does: the same request (pattern, id, input) answers the flow it started.
      const claim = requestId ? await claimRequest(this.requestIds, { pattern: flowName, requestId, flowId, input: flowInput }) : undefined;
      if (claim && claim.flowId !== flowId) return claim.flowId;
      try {
        await this.host.start(flowName, flowInput, { flowId, ...(requestId ? { requestId } : {}) });
      } catch (e) {
        await claim?.release().catch(() => undefined);
        throw e;
      }
      return flowId;
    });
  }

  get(flowId: string): Promise<FlowRecord | undefined> {
    return this.call(async () => {
      const record = await this.record(flowId);
      return record && publicRecord(record);
    });
  }

  list(filter: { status?: FlowRecord['status'] | readonly FlowRecord['status'][] } = {}) {
    return this.call(async () => {
      const statuses = filter.status === undefined ? undefined : typeof filter.status === 'string' ? [filter.status] : filter.status;
      const unknown = statuses?.filter((s) => !FlowStatusSchema.safeParse(s).success);
      if (unknown?.length) throw new OrchestratorError('INVALID_INPUT', `unknown status ${unknown.join(', ')}: one of ${FlowStatusSchema.options.join(', ')}`);
      return this.runtime.store.list(statuses ? { status: statuses } : {});
    });
  }

  cancel(flowId: string): Promise<void> {
    return this.call(async () => {
      if (await this.host.cancel(flowId)) return;
      // Run by another process on the state directory (or by none): the record says
      // cancelled, compare-and-set, as `microtask cancel` does; that process finds its next save refused.
      for (;;) {
        const stored = await this.runtime.store.load(flowId);
        if (!stored) throw new OrchestratorError('FLOW_NOT_FOUND', `no flow ${flowId}`);
        if (stored.record.status !== 'running') throw new OrchestratorError('FLOW_FINISHED', `flow ${flowId} already ended: ${stored.record.status}`);
        const error = { code: 'CANCELLED', message: 'cancelled by request' };
        try {
          await this.runtime.store.save({ ...stored.record, status: 'cancelled', error, updatedAt: new Date().toISOString() }, stored.revision);
        } catch (e) {
          if (e instanceof SnapshotConflictError) continue;
          throw e;
        }
        this.runtime.journal.append({ kind: 'flow', flowId, at: new Date().toISOString(), phase: 'ended', pattern: stored.record.pattern, status: 'cancelled', error });
        return;
      }
    });
  }

  send(flowId: string, event: { type: string; data?: unknown; eventId?: string }): Promise<{ eventId: string; duplicate: boolean }> {
    return this.call(async () => {
      const checked = FlowSendRequestSchema.safeParse({ ...event, flowId, ...(event?.data !== undefined ? { data: asJson(event.data, 'the event data') } : {}) });
      if (!checked.success) throw new OrchestratorError('INVALID_INPUT', `invalid event: ${oneLine(checked.error)}`);
      const { type, data } = checked.data;
      const eventId = checked.data.eventId ?? randomUUID();
      const kept: KeptEvent = { eventId, type, ...(data !== undefined ? { data } : {}), sentAt: Date.now() };
      // Checked against what the flow waits for, kept in the inbox; the inbox's follower applies it.
      const { duplicate } = await sendEvent({ store: this.runtime.store, inbox: this.runtime.inbox, flows: this.flows, running: (id) => this.runningHere(id) }, flowId, kept);
      return { eventId, duplicate };
    });
  }

  events(flowId: string): AsyncIterable<FlowEvent> {
    return { [Symbol.asyncIterator]: () => inOrder(this.source(flowId))[Symbol.asyncIterator]() };
  }

  /** What `events` reads: the feed of a flow run here (or that ended here), else its end from the record, or the record looked at until it ends. */
  private async *source(flowId: string): AsyncGenerator<FlowEvent> {
    this.assertOpen();
    // Followed before the record is read: a step announced meanwhile is in the feed (a repeat is dropped by seq).
    const reader = this.feed.follow(flowId);
    try {
      if (!this.host.running(flowId)) {
        const record = await coded(() => this.record(flowId));
        if (!record) throw new OrchestratorError('FLOW_NOT_FOUND', `no flow ${flowId}`);
        if (record.status === 'running') {
          yield* this.polled(flowId);
          return;
        }
        reader.push(eventOf(record));
      }
      yield* reader;
    } finally {
      await reader.return();
    }
  }

  /** A flow another process runs: each step its record shows (a quick run of steps may show as its last), to its end. */
  private async *polled(flowId: string): AsyncGenerator<FlowEvent> {
    for (;;) {
      const record = await this.closedOr(coded(() => this.record(flowId)));
      if (!record) throw new OrchestratorError('FLOW_NOT_FOUND', `flow ${flowId} is gone from the store`);
      if ((record.seq ?? 0) > 0 || record.status !== 'running') yield eventOf(record);
      if (record.status !== 'running') return;
      await this.closedOr(sleep(POLL_MS));
    }
  }

  done(flowId: string): Promise<FlowRecord> {
    return this.call(async () => {
      for (;;) {
        // Run here: its end, as the host saves it. Else (ended, or run by another process): the store's record.
        const finished = this.host.running(flowId) ? this.host.finished(flowId) : undefined;
        const record = finished ? await this.closedOr(finished) : await this.record(flowId);
        if (!record) throw new OrchestratorError('FLOW_NOT_FOUND', `no flow ${flowId}`);
        if (record.status !== 'running') return publicRecord(record);
        // Stopped where it stood: its store failed (resumable by the next orchestrator or `microtask resume`).
        if (record.error) throw new OrchestratorError('STORE_UNAVAILABLE', record.error.message);
        // Run by another process, or it left this host without ending (another took it over): look again.
        await this.closedOr(sleep(POLL_MS));
      }
    });
  }

  close(): Promise<void> {
    this.closed ??= (async () => {
      const error = new OrchestratorError('CLOSED', 'the orchestrator is closed');
      this.rejectClosing(error);
      this.feed.close(error);
      clearInterval(this.keepAlive);
      await this.following?.stop();
      // Its flows stay saved, `running`: the next orchestrator, daemon or `microtask resume` on the directory goes on with them.
      await this.host.stop();
      await this.runtime.journal.flush();
      await this.runtime.close();
    })();
    return this.closed;
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  private get requestIds(): RequestIds {
    const { db } = this.runtime;
    return { claim: (key, holder) => db.claimRequest(key, holder), release: (key, holder) => db.releaseRequest(key, holder) };
  }

  /** The flow's record: live when it runs here, else as stored; undefined when there is none (or the id cannot be one). */
  private async record(flowId: string): Promise<FlowSnapshotRecord | undefined> {
    if (typeof flowId !== 'string' || !isValidFlowId(flowId)) return undefined;
    return this.host.running(flowId) ?? (await this.runtime.store.load(flowId))?.record;
  }

  /** A flow running awake here, with its live waits (an asleep one's stored snapshot has them). */
  private runningHere(flowId: string): { record: FlowSnapshotRecord; waits: LiveWait[] } | undefined {
    const waits = this.host.liveWaits(flowId);
    const record = waits && this.host.running(flowId);
    return record && { record, waits };
  }

  private assertOpen() {
    if (this.closed) throw new OrchestratorError('CLOSED', 'the orchestrator is closed');
  }

  private call<T>(body: () => Promise<T>): Promise<T> {
    return coded(async () => {
      this.assertOpen();
      return body();
    });
  }

  private closedOr<T>(promise: Promise<T>): Promise<T> {
    return Promise.race([promise, this.closing]);
  }
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

function moduleOf(flows: EmbeddedOrchestratorOptions['flows']): FlowsModule {
  if (flows === undefined) return { flows: [] };
  if (Array.isArray(flows)) return { flows: flows as readonly FlowDefinition[] };
  const module = flows as FlowsModule;
  if (!module || !Array.isArray(module.flows)) throw new OrchestratorError('INVALID_OPTIONS', 'flows: an array of flow definitions, or a module {flows, answers?, fallbacks?}');
  return module;
}

/**
 * The value as the daemon would receive it over the wire (JSON: a Date becomes its text,
 * undefined keys go), so both modes accept and refuse alike; too deep is refused as there.
 */
function asJson(value: unknown, what: string): unknown {
  let text: string | undefined;
  try {
    text = JSON.stringify(value);
  } catch (e) {
    throw new OrchestratorError('INVALID_INPUT', `${what} is not JSON data: ${(e as Error).message}`);
  }
  if (text === undefined) return undefined;
  const json: unknown = JSON.parse(text);
  if (depthExceeds(json, MAX_JSON_DEPTH)) throw new OrchestratorError('INVALID_INPUT', `${what} is nested deeper than ${MAX_JSON_DEPTH} levels of arrays and objects (the limit)`);
  return json;
}

/** A schema's refusal in one line: each place and what is wrong there. */
const oneLine = (error: z.ZodError) => error.issues.map((i) => `${i.path.length ? i.path.join('.') : '(root)'}: ${i.message}`).join('; ');


/** The flow's latest step as its event (its end, for an ended flow). */
const eventOf = (record: FlowSnapshotRecord): FlowEvent => ({ flowId: record.flowId, seq: record.seq ?? 1, state: record.state, status: record.status, at: record.updatedAt });
