import { z } from 'zod';
import { describeIssues } from '../actors/model/prompt.js';
import { holdToolChecks } from '../actors/toolCheck.js';
import { type Bus, type BusMessage, type BusSubscription, type EventLog } from '../bus/Bus.js';
import { subjects, type Subjects } from '../bus/subjects.js';
import type { Flows } from '../flows.js';
import { JsonInputError, parseJsonInput } from '../jsonInput.js';
import type { Logger } from '../log.js';
import { FlowHost, newFlowId } from '../flowHost.js';
import type { FlowSnapshotRecord, SnapshotStore } from '../persistence/SnapshotStore.js';
import type { MicrotaskResult } from '../contracts/microtask.js';
import { resultKey } from '../bus/resultKey.js';
import { scrubSecrets } from '../secrets.js';
import { zeroUsage } from '../contracts/usage.js';
import type { Journal } from '../journal/Journal.js';
import type { InspectionEvent } from 'xstate';
import {
  FlowIdRequestSchema,
  FlowSendRequestSchema,
  FlowStartRequestSchema,
  ProtocolError,
  ToolBuildRequestSchema,
  type Answer,
  type FlowRecord,
} from './protocol.js';
import { claimRequest, KvRequestIds, type RequestIds } from './requestClaims.js';
import { randomUUID } from 'node:crypto';
import { BusInbox } from '../inbox/BusInbox.js';
import type { Inbox } from '../inbox/Inbox.js';
import { EventRefusedError, type LiveWait } from '../flowWaits.js';
import { publicRecord } from './flowRecord.js';
import { SendError, sendEvent } from '../sendEvent.js';
import type { KeptEvent } from '../contracts/waits.js';
import type { LeaseBoard } from '../leases.js';

export type { RequestIds } from './requestClaims.js';

export interface DaemonOptions {
  bus: Bus;
  flows: Flows;
  /** Where every flow's snapshot is saved after each transition. */
  store: SnapshotStore;
  logger: Logger;
  /** Where the tool builder writes tools. */
  outRoot: string;
  subjectPrefix?: string;
  /** Requests above this many bytes are refused with TOO_LARGE. */
  maxRequestBytes?: number;
  /** With several daemons on one store (NATS): this daemon's name, its lease, and where heartbeats are kept (src/leases.ts). */
  lease?: { owner: string; durationMs: number; board?: LeaseBoard };
  /** Where each flow's history goes (`microtask show`, the inspector). */
  journal?: Journal;
  /** How long flows' events and done messages are kept in their stream; unset: until removed. */
  retentionMs?: number;
  /** Sees every inspection event of every flow (Stately's inspector). */
  inspect?: (event: InspectionEvent) => void;
  /**
   * Where request ids are claimed (embedded: the state directory's database, shared by the
   * processes on it); unset: the bus's flows bucket.
   */
  requestIds?: RequestIds;
  /** Where the store keeps flows, for messages (`ENOSPC: no space left on <where>`). */
  storeLocation?: string;
  /**
   * Where events sent to flows are kept until applied (embedded: the state directory's
   * database, shared with `microtask send` in other processes); unset: a stream on the bus.
   */
  inbox?: Inbox;
}

/**
 * The orchestrator daemon: serves the protocol's subjects (tool builds, starting any
 * pattern, status, cancel), runs each flow durably (FlowHost: a snapshot after every
 * transition, before it is announced), resumes unfinished flows when it starts, and
 * publishes every flow's events and done message to a stream, so a late subscriber
 * replays its history. Bad input on any subject gets an error answer (or, without a reply
 * subject, a message on `<prefix>.errors`) and the daemon carries on.
 */
export class Daemon {
  private readonly subjects: Subjects;
  private readonly subscriptions: BusSubscription[] = [];
  private log!: EventLog;
  private requestIds!: RequestIds;
  private readonly host: FlowHost;
  private readonly maxBytes: number;
  private releaseToolChecks: (() => Promise<void>) | undefined;
  private inbox!: Inbox;
  private following: { stop(): Promise<void> } | undefined;

  constructor(private readonly options: DaemonOptions) {
    this.subjects = subjects(options.subjectPrefix);
    this.maxBytes = options.maxRequestBytes ?? 256 * 1024;
    this.host = new FlowHost({
      flows: options.flows,
      store: options.store,
      logger: options.logger,
      outRoot: options.outRoot,
      ...(options.lease ? { lease: options.lease } : {}),
      ...(options.journal ? { journal: options.journal } : {}),
      ...(options.inspect ? { inspect: options.inspect } : {}),
      ...(options.storeLocation ? { storeLocation: options.storeLocation } : {}),
      onEvent: async (event) => {
        await this.log.append(this.subjects.flowEvents(event.flowId), JSON.stringify(event));
      },
      onDone: async (done) => {
        await this.log.append(this.subjects.flowDone(done.flowId), JSON.stringify(done));
      },
      onCancel: (flowId, keys) => this.withdraw(flowId, keys),
      keptEvents: (flowId) => this.inbox.read(flowId),
      keptEventsAll: () => this.inbox.readAll(),
    });
  }

  async start(): Promise<void> {
    const { bus } = this.options;
    this.releaseToolChecks ??= holdToolChecks();
    this.log = await bus.eventLog(this.subjects.flowLog, {
      subjects: this.subjects.flowLogSubjects,
      ...(this.options.retentionMs ? { maxAgeMs: this.options.retentionMs } : {}),
    });
    // A request id is answered with its flow for the retention, then forgotten (as the flow's snapshot is).
    this.requestIds =
      this.options.requestIds ??
      new KvRequestIds(await bus.keyValue(this.subjects.flowsBucket, this.options.retentionMs ? { maxAgeMs: this.options.retentionMs } : {}));
    this.inbox =
      this.options.inbox ??
      (await BusInbox.open(bus, {
        ...(this.options.subjectPrefix ? { subjectPrefix: this.options.subjectPrefix } : {}),
        ...(this.options.retentionMs ? { retentionMs: this.options.retentionMs } : {}),
        onError: (message) => this.options.logger.warn({ inbox: true }, message),
      }));
    // Followed before the flows are resumed: an event sent while one resumes is either in
    // what its resume reads or delivered here (the host applies an id once).
    this.following = await this.inbox.follow((flowId, event) => void this.deliver(flowId, event));
    const { resumed, failed } = await this.host.resumeAll();
    if (resumed.length || failed.length) this.options.logger.info({ resumed: resumed.length, failed: failed.length }, 'unfinished flows resumed');
    this.host.startLeases();
    // Daemons share requests (a queue group); cancel goes to all, and the one running the flow acts.
    const queue = { queue: 'microtask-daemons' };
    this.subscriptions.push(
      await bus.subscribe(this.subjects.toolBuildRequest, (m) => this.serve(m, () => this.onToolBuild(m)), queue),
      await bus.subscribe(this.subjects.flowStartAll, (m) => this.serve(m, () => this.onFlowStart(m)), queue),
      await bus.subscribe(this.subjects.flowGet, (m) => this.serve(m, () => this.onFlowGet(m)), queue),
      await bus.subscribe(this.subjects.flowCancel, (m) => this.serve(m, () => this.onCancel(m))),
      await bus.subscribe(this.subjects.flowSend, (m) => this.serve(m, () => this.onSend(m)), queue),
    );
    this.options.logger.info({ flows: this.options.flows.catalog.names() }, 'daemon serving');
  }

  /**
   * Stops serving and stops the flows here; their snapshots stay, to be resumed on the next
   * start. With `graceMs`, the microtasks in flight first get that long to finish.
   */
  async stop(graceMs?: number): Promise<void> {
    await Promise.all(this.subscriptions.splice(0).map((s) => s.unsubscribe()));
    await this.following?.stop();
    this.following = undefined;
    await (graceMs ? this.host.drain(graceMs) : this.host.stop());
    await this.options.journal?.flush();
    // The flows are stopped: checks still compiling for them would only keep the process up.
    const release = this.releaseToolChecks;
    this.releaseToolChecks = undefined;
    await release?.();
  }

  /**
   * What the inspector reads (the snapshot store, the journal and the machines) and what it
   * sends a person's answer with: the inbox, and the flows running here (checked live).
   */
  get parts() {
    const { store, journal, flows } = this.options;
    const running = (flowId: string) => this.runningHere(flowId);
    return { store, journal, flows, inbox: this.inbox, running };
  }

  /** How many flows this daemon holds asleep (they only wait: src/flowSleeping.ts), for the ops gauge microtask_flows_asleep. */
  flowsAsleep(): number {
    return this.host.flowsAsleep();
  }

  /** The flows this daemon holds asleep, with their patterns (microtask_flows_running counts them too). */
  asleepFlows(): Iterable<{ flowId: string; pattern: string }> {
    return this.host.asleepFlows();
  }

  /**
   * Starts a flow, or finds the one started for the same request (same pattern, requestId
   * and input); the requestId reused with another input is refused (REQUEST_ID_CONFLICT).
   */
  async startFlow(pattern: string, input: Record<string, unknown>, requestId?: string): Promise<string> {
    const flowId = newFlowId(pattern);
    const claim = requestId ? await claimRequest(this.requestIds, { pattern, requestId, flowId, input }) : undefined;
    if (claim && claim.flowId !== flowId) return claim.flowId;
    try {
      await this.host.start(pattern, input, { flowId, ...(requestId ? { requestId } : {}) });
    } catch (e) {
      // A retry of the request must start the flow, not find one that never began.
      await claim?.release().catch(() => undefined);
      throw e;
    }
    this.options.logger.info({ flowId, pattern, requestId }, 'flow started');
    return flowId;
  }

  private async onToolBuild(message: BusMessage): Promise<Answer> {
    const spec = this.parse(message, ToolBuildRequestSchema, 'tool spec');
    const { requestId, ...rest } = spec;
    return { ok: true, flowId: await this.startFlow('tool-builder', { spec: rest }, requestId) };
  }

  private async onFlowStart(message: BusMessage): Promise<Answer> {
    const pattern = message.subject.split('.').pop() ?? '';
    const definition = this.options.flows.catalog.definition(pattern);
    if (!definition) {
      throw new ProtocolError('UNKNOWN_PATTERN', `no pattern "${pattern}"; one of: ${this.options.flows.catalog.names().join(', ')}`);
    }
    const request = this.parse(message, FlowStartRequestSchema, 'flow start request');
    const input = definition.input.safeParse(request.input);
    if (!input.success) throw new ProtocolError('INVALID_INPUT', `invalid ${pattern} input:\n${describeIssues(input.error)}`);
    return { ok: true, flowId: await this.startFlow(pattern, input.data as Record<string, unknown>, request.requestId) };
  }

  /**
   * An event for a flow, from its inbox: applied when this daemon runs the flow (another
   * daemon applies it otherwise, or the flow's resume). One the flow does not accept is
   * reported on the errors subject: a client that published to the inbox has no answer.
   */
  private async deliver(flowId: string, event: KeptEvent): Promise<void> {
    try {
      const outcome = await this.host.send(flowId, event);
      if (outcome === 'duplicate') this.options.logger.debug({ flowId, eventId: event.eventId }, 'event already applied');
    } catch (e) {
      if (!(e instanceof EventRefusedError)) {
        this.options.logger.error({ flowId, eventId: event.eventId, err: e }, 'could not apply an event');
        return;
      }
      this.options.logger.warn({ flowId, eventId: event.eventId, code: e.code }, e.message);
      const error = { code: e.code, message: e.message };
      await this.options.bus
        .publish(this.subjects.errors, JSON.stringify({ subject: this.subjects.flowInbox(flowId), eventId: event.eventId, error }))
        .catch(() => undefined);
    }
  }

  /**
   * flow.send: checks the event against what the flow waits for now (the flow running
   * here, or its stored snapshot), keeps it in the flow's inbox, and answers once it is
   * kept; the daemon that runs the flow applies it.
   */
  private async onSend(message: BusMessage): Promise<Answer<{ flowId: string; eventId: string; duplicate?: boolean }>> {
    const request = this.parse(message, FlowSendRequestSchema, 'flow send request');
    const { flowId, type, data } = request;
    const eventId = request.eventId ?? randomUUID();
    const event: KeptEvent = { eventId, type, ...(data !== undefined ? { data } : {}), sentAt: Date.now() };
    let kept;
    try {
      kept = await sendEvent(
        {
          store: this.options.store,
          inbox: this.inbox,
          flows: this.options.flows,
          running: (id) => this.runningHere(id),
        },
        flowId,
        event,
      );
    } catch (e) {
      if (e instanceof EventRefusedError || e instanceof SendError) throw new ProtocolError(e.code, e.message);
      throw e;
    }
    if (kept.duplicate) return { ok: true, flowId, eventId, duplicate: true };
    this.options.logger.info({ flowId, eventId, type }, 'event kept for the flow');
    return { ok: true, flowId, eventId };
  }

  /**
   * A flow running awake here, with its live waits; undefined otherwise (asleep here, or
   * elsewhere: its stored snapshot says what it waits for).
   */
  private runningHere(flowId: string): { record: FlowSnapshotRecord; waits: LiveWait[] } | undefined {
    const waits = this.host.liveWaits(flowId);
    const record = waits && this.host.running(flowId);
    return record && { record, waits };
  }

  private async record(flowId: string): Promise<FlowRecord | undefined> {
    const record = this.host.running(flowId) ?? (await this.options.store.load(flowId).catch(() => undefined))?.record;
    return record && publicRecord(record);
  }

  /**
   * A cancelled flow's tasks may still wait in the work queue: a `cancelled` result under
   * each key makes the worker that takes one skip it (the runner treats it as final), so
   * no model call is paid for work nobody waits for.
   */
  private async withdraw(flowId: string, keys: string[]): Promise<void> {
    const results = await this.options.bus.keyValue(this.subjects.resultsBucket);
    for (const key of keys) {
      const withdrawn: MicrotaskResult = {
        success: false,
        taskType: 'withdrawn',
        key,
        error: { kind: 'cancelled', message: `flow ${flowId} was cancelled before this task ran`, retryable: false },
        durationMs: 0,
        usage: zeroUsage(),
        cached: false,
      };
      await results.put(resultKey(key), JSON.stringify(withdrawn));
    }
    this.options.logger.info({ flowId, tasks: keys.length }, 'tasks of a cancelled flow withdrawn');
  }

  private async onFlowGet(message: BusMessage): Promise<Answer<FlowRecord>> {
    const { flowId } = this.parse(message, FlowIdRequestSchema, 'flow get request');
    const record = await this.record(flowId);
    if (!record) throw new ProtocolError('FLOW_NOT_FOUND', `no flow ${flowId}`);
    return { ok: true, ...record };
  }

  private async onCancel(message: BusMessage): Promise<Answer<{ flowId: string }> | undefined> {
    const { flowId } = this.parse(message, FlowIdRequestSchema, 'flow cancel request');
    if (await this.host.cancel(flowId)) return { ok: true, flowId };
    const record = await this.record(flowId);
    if (!record) throw new ProtocolError('FLOW_NOT_FOUND', `no flow ${flowId}`);
    if (record.status !== 'running') throw new ProtocolError('FLOW_FINISHED', `flow ${flowId} already ended: ${record.status}`);
    // Running on another daemon: that one answers.
    return undefined;
  }

  private parse<T>(message: BusMessage, schema: z.ZodType<T>, what: string): T {
    if (message.data.byteLength > this.maxBytes) {
      throw new ProtocolError('TOO_LARGE', `the ${what} is ${message.data.byteLength} bytes; the limit is ${this.maxBytes}`);
    }
    let json: unknown;
    try {
      json = parseJsonInput(message.data);
    } catch (e) {
      if (!(e instanceof JsonInputError)) throw e;
      // Too deep is JSON of the wrong shape: refused before a schema or the snapshot check recurses into it.
      throw new ProtocolError(e.code === 'TOO_DEEP' ? 'INVALID_INPUT' : 'BAD_JSON', `the ${what} ${e.message}`);
    }
    const parsed = schema.safeParse(json);
    if (!parsed.success) throw new ProtocolError('INVALID_INPUT', `invalid ${what}:\n${describeIssues(parsed.error)}`);
    return parsed.data;
  }

  /** Runs a handler; answers its result, or its error as `{ok:false, error}`; never throws. */
  private async serve(message: BusMessage, handler: () => Promise<Answer<object> | undefined>): Promise<void> {
    let answer: Answer<object> | undefined;
    try {
      answer = await handler();
    } catch (e) {
      const error =
        e instanceof ProtocolError
          ? { code: e.code, message: e.message }
          : // A store's or library's message may quote a credential (ModelErrors are scrubbed when made).
            { code: 'INTERNAL' as const, message: scrubSecrets(e instanceof Error ? e.message : String(e)) };
      if (error.code === 'INTERNAL') this.options.logger.error({ err: e, subject: message.subject }, 'request failed');
      else this.options.logger.warn({ subject: message.subject, error }, 'bad request');
      answer = { ok: false, error };
    }
    if (!answer) return;
    try {
      if (message.reply) await this.options.bus.respond(message, JSON.stringify(answer));
      else if (!answer.ok) {
        await this.options.bus.publish(this.subjects.errors, JSON.stringify({ subject: message.subject, error: answer.error }));
      }
    } catch (e) {
      this.options.logger.error({ err: e, subject: message.subject }, 'could not answer a request');
    }
  }
}
