import { randomUUID } from 'node:crypto';
import { z } from 'zod';
import { BusError, type Bus, type BusSubscription } from './bus/Bus.js';
import { connectNatsBus, type NatsBusOptions } from './bus/NatsBus.js';
import { subjects, type Subjects } from './bus/subjects.js';
import { KvSnapshotStore } from './persistence/KvSnapshotStore.js';
import type { FlowSummary, ListFilter } from './persistence/SnapshotStore.js';
import {
  ErrorAnswerSchema,
  FlowDoneSchema,
  FlowEventSchema,
  FlowGetAnswerSchema,
  FlowSentAnswerSchema,
  FlowStartedSchema,
  type FlowDone,
  type FlowEvent,
} from './daemon/protocol.js';

/**
 * A typed client of the daemon's bus protocol (docs/protocol.md), for programs that drive
 * flows over NATS: `import { MicrotaskClient } from 'microtask-orchestrator/client'`. Every
 * reply is checked against the protocol's schemas; a refusal, a daemon that does not
 * answer and a reply of the wrong shape are each a ClientError with a code to switch on.
 * The CLI speaks to the daemon through it.
 */

export type ClientErrorCode =
  /** Nobody serves the subject: no daemon runs against this NATS and prefix. */
  | 'NO_DAEMON'
  /** A daemon was there but did not answer in time. */
  | 'TIMEOUT'
  /** The answer is not what the protocol says (another program on the subject, another version). */
  | 'BAD_REPLY'
  /** The daemon's own codes: INVALID_INPUT, FLOW_NOT_FOUND, EVENT_NOT_ACCEPTED, ... (docs/protocol.md). */
  | (string & {});

export class ClientError extends Error {
  override readonly name = 'ClientError';
  constructor(
    readonly code: ClientErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

export type FlowRecord = z.infer<typeof FlowGetAnswerSchema>;
export type { FlowSummary, ListFilter };

export interface MicrotaskClientOptions {
  /** MICROTASK_SUBJECT_PREFIX of the daemon; `microtask` by default. */
  subjectPrefix?: string;
  /** How long a request waits for its answer; 10 s by default. */
  timeoutMs?: number;
}

export class MicrotaskClient {
  private readonly names: Subjects;
  private readonly timeoutMs: number;

  constructor(
    private readonly bus: Bus,
    options: MicrotaskClientOptions = {},
    private readonly owned = false,
  ) {
    this.names = subjects(options.subjectPrefix);
    this.timeoutMs = options.timeoutMs ?? 10_000;
  }

  /** Connects to NATS (the same options as the daemon's: servers, credentials, TLS); `close` disconnects. */
  static async connect(options: Omit<NatsBusOptions, 'subjectPrefix'> & MicrotaskClientOptions): Promise<MicrotaskClient> {
    const bus = await connectNatsBus({ ...options, name: options.name ?? 'microtask-client', waitOnFirstConnect: false, maxReconnectAttempts: options.maxReconnectAttempts ?? 10 });
    return new MicrotaskClient(bus, options, true);
  }

  /** Starts a tool build (the tool-builder flow) for a spec; resolves with the flow's id. */
  async buildTool(spec: Record<string, unknown>, options: { requestId?: string } = {}): Promise<string> {
    return (await this.ask(this.names.toolBuildRequest, { ...spec, requestId: options.requestId ?? randomUUID() }, FlowStartedSchema)).flowId;
  }

  /** Starts a flow of a pattern; the same requestId and input answer the same flow (a retry is safe). */
  async start(pattern: string, input: unknown, options: { requestId?: string } = {}): Promise<string> {
    return (await this.ask(this.names.flowStart(pattern), { input, requestId: options.requestId ?? randomUUID() }, FlowStartedSchema)).flowId;
  }

  /** The flow's saved record: status, state, output or error, and what it waits for. */
  async get(flowId: string): Promise<FlowRecord> {
    return this.ask(this.names.flowGet, { flowId }, FlowGetAnswerSchema);
  }

  /**
   * The flows the daemons keep (the snapshots bucket they share, read as `microtask flows`
   * does: no daemon needs to answer), oldest first; `status` keeps those of that status.
   */
  async list(filter: ListFilter = {}): Promise<FlowSummary[]> {
    // Opened as it is: limits given here would set the bucket's (its replicas) as a daemon's bus would not.
    const store = new KvSnapshotStore(await this.bus.keyValue(this.names.snapshotsBucket));
    return store.list(filter);
  }

  async cancel(flowId: string): Promise<void> {
    await this.ask(this.names.flowCancel, { flowId }, FlowStartedSchema);
  }

  /** Sends an event to a flow that waits for one (a person's answer); resolves once it is kept. */
  async send(flowId: string, event: { type: string; data?: unknown; eventId?: string }): Promise<{ eventId: string; duplicate: boolean }> {
    const answer = await this.ask(this.names.flowSend, { flowId, eventId: event.eventId ?? randomUUID(), type: event.type, ...(event.data !== undefined ? { data: event.data } : {}) }, FlowSentAnswerSchema);
    return { eventId: answer.eventId, duplicate: answer.duplicate === true };
  }

  /** Each step of the flow from its first (replayed from the stream), then the live ones, until unsubscribed. */
  async events(flowId: string, handler: (event: FlowEvent) => void): Promise<BusSubscription> {
    const log = await this.bus.eventLog(this.names.flowLog, { subjects: this.names.flowLogSubjects });
    return log.replay(this.names.flowEvents(flowId), (m) => {
      const parsed = FlowEventSchema.safeParse(m.json());
      if (parsed.success) handler(parsed.data);
    });
  }

  /** Resolves with the flow's done message (at once when it has ended), until `signal` aborts. */
  async done(flowId: string, options: { signal?: AbortSignal } = {}): Promise<FlowDone> {
    const { signal } = options;
    const log = await this.bus.eventLog(this.names.flowLog, { subjects: this.names.flowLogSubjects });
    let resolve!: (done: FlowDone) => void;
    let reject!: (e: unknown) => void;
    const result = new Promise<FlowDone>((res, rej) => ((resolve = res), (reject = rej)));
    const subscription = await log.replay(this.names.flowDone(flowId), async (m) => {
      const parsed = FlowDoneSchema.safeParse(m.json());
      if (parsed.success) resolve(parsed.data as FlowDone);
      else reject(new ClientError('BAD_REPLY', `the done message of flow ${flowId} is not what the protocol says`));
    });
    const onAbort = () => reject(signal?.reason);
    signal?.addEventListener('abort', onAbort, { once: true });
    try {
      return await result;
    } finally {
      signal?.removeEventListener('abort', onAbort);
      await subscription.unsubscribe();
    }
  }

  /** Closes the connection when `connect` made it; a bus given to the constructor is the caller's. */
  async close(): Promise<void> {
    if (this.owned) await this.bus.close();
  }

  private async ask<T>(subject: string, body: unknown, schema: z.ZodType<T>): Promise<T> {
    let json: unknown;
    try {
      json = (await this.bus.request(subject, JSON.stringify(body), { timeoutMs: this.timeoutMs })).json();
    } catch (e) {
      if (e instanceof BusError && e.code === 'NO_RESPONDERS') {
        throw new ClientError('NO_DAEMON', `no daemon answered on ${subject} (nobody listening): start one with \`microtask daemon\` against the same NATS_URL and MICROTASK_SUBJECT_PREFIX`, { cause: e });
      }
      if (e instanceof BusError && e.code === 'TIMEOUT') {
        throw new ClientError('TIMEOUT', `no daemon answered on ${subject} within ${this.timeoutMs} ms: is one running against the same NATS_URL and MICROTASK_SUBJECT_PREFIX?`, { cause: e });
      }
      if (e instanceof BusError && e.code === 'NOT_JSON') throw new ClientError('BAD_REPLY', `the answer on ${subject} is not JSON`, { cause: e });
      throw e;
    }
    const refused = ErrorAnswerSchema.safeParse(json);
    if (refused.success) throw new ClientError(refused.data.error.code, refused.data.error.message);
    const parsed = schema.safeParse(json);
    if (!parsed.success) throw new ClientError('BAD_REPLY', `the answer on ${subject} is not what the protocol says: ${parsed.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ')}`);
    return parsed.data;
  }
}
