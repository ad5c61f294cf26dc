import { createHash } from 'node:crypto';
import { createActor, type AnyActorRef, type AnyStateMachine } from 'xstate';
import { z } from 'zod';
import { describeIssues } from '../actors/model/prompt.js';
import { BusError, type Bus, type BusMessage, type BusSubscription, type EventLog, type KeyValueStore } from '../bus/Bus.js';
import { subjects, type Subjects } from '../bus/subjects.js';
import type { Flows } from '../flows.js';
import type { Logger } from '../log.js';
import { isPatternName, machineFor, patternInputSchemas, patternNames, type PatternName } from '../patterns.js';
import { newFlowId } from '../runFlow.js';
import {
  FlowIdRequestSchema,
  FlowRecordSchema,
  FlowStartRequestSchema,
  ProtocolError,
  ToolBuildRequestSchema,
  type Answer,
  type FlowDone,
  type FlowEvent,
  type FlowRecord,
  type FlowStatus,
} from './protocol.js';

export interface DaemonOptions {
  bus: Bus;
  flows: Flows;
  logger: Logger;
  /** Where the tool builder writes tools. */
  outRoot: string;
  subjectPrefix?: string;
  /** Requests above this many bytes are refused with TOO_LARGE. */
  maxRequestBytes?: number;
}

interface RunningFlow {
  actor: AnyActorRef;
  record: FlowRecord;
  seq: number;
  /** Publishes of one flow, in order: an event never overtakes the one before it. */
  chain: Promise<void>;
}

const requestKey = (requestId: string) => `request.${createHash('sha256').update(requestId).digest('hex').slice(0, 40)}`;
const flowKey = (flowId: string) => `flow.${flowId}`;

/**
 * The orchestrator daemon: serves the protocol's subjects (tool builds, starting any
 * pattern, status, cancel), runs each flow's machine, and publishes every flow's events
 * and done message to a stream, so a late subscriber replays its history. Bad input on
 * any subject gets an error answer (or, without a reply subject, a message on
 * `<prefix>.errors`) and the daemon carries on.
 */
export class Daemon {
  private readonly subjects: Subjects;
  private readonly running = new Map<string, RunningFlow>();
  private readonly subscriptions: BusSubscription[] = [];
  private log!: EventLog;
  private records!: KeyValueStore;
  private readonly maxBytes: number;

  constructor(private readonly options: DaemonOptions) {
    this.subjects = subjects(options.subjectPrefix);
    this.maxBytes = options.maxRequestBytes ?? 256 * 1024;
  }

  async start(): Promise<void> {
    const { bus } = this.options;
    this.log = await bus.eventLog(this.subjects.flowLog, { subjects: this.subjects.flowLogSubjects });
    this.records = await bus.keyValue(this.subjects.flowsBucket);
    // Daemons share requests (a queue group); cancel goes to all, and the one running the flow acts.
    const queue = { queue: 'microtask-daemons' };
    this.subscriptions.push(
      await bus.subscribe(this.subjects.toolBuildRequest, (m) => this.serve(m, () => this.onToolBuild(m)), queue),
      await bus.subscribe(this.subjects.flowStartAll, (m) => this.serve(m, () => this.onFlowStart(m)), queue),
      await bus.subscribe(this.subjects.flowGet, (m) => this.serve(m, () => this.onFlowGet(m)), queue),
      await bus.subscribe(this.subjects.flowCancel, (m) => this.serve(m, () => this.onCancel(m))),
    );
    this.options.logger.info({ patterns: patternNames }, 'daemon serving');
  }

  /** Stops serving; flows in flight are stopped (their snapshots are the durability issue's). */
  async stop(): Promise<void> {
    await Promise.all(this.subscriptions.splice(0).map((s) => s.unsubscribe()));
    for (const flow of this.running.values()) flow.actor.stop();
    await Promise.all([...this.running.values()].map((f) => f.chain));
    this.running.clear();
  }

  /** Starts a flow (or finds the one started for the same requestId). */
  async startFlow(pattern: PatternName, input: Record<string, unknown>, requestId?: string): Promise<string> {
    const flowId = newFlowId(pattern);
    if (requestId) {
      try {
        await this.records.create(requestKey(requestId), flowId);
      } catch (e) {
        if (e instanceof BusError && e.code === 'KV_EXISTS') {
          const existing = await this.records.get(requestKey(requestId));
          if (existing) return existing.string();
        }
        throw e;
      }
    }
    const machine = machineFor(this.options.flows, pattern) as AnyStateMachine;
    const flowInput = {
      ...input,
      key: (input.key as string | undefined) ?? flowId,
      ...(pattern === 'tool-builder' ? { outRoot: this.options.outRoot } : {}),
    };
    const logger = this.options.logger.child({ flowId, pattern });
    const actor = createActor(machine, { input: flowInput, id: flowId });
    const flow: RunningFlow = {
      actor,
      seq: 0,
      chain: Promise.resolve(),
      record: {
        flowId,
        pattern,
        status: 'running',
        state: null,
        updatedAt: new Date().toISOString(),
        ...(requestId ? { requestId } : {}),
      },
    };
    this.running.set(flowId, flow);
    actor.subscribe({
      next: (snapshot: { status: string; value: unknown; output?: unknown }) => {
        if (snapshot.status === 'active') this.publishEvent(flow, snapshot.value);
        if (snapshot.status === 'done') this.finish(flow, snapshot.value, outputStatus(snapshot.output), snapshot.output);
      },
      error: (error: unknown) => {
        logger.error({ err: error }, 'flow crashed');
        this.finish(flow, flow.record.state, 'failed', undefined, { code: 'FLOW_CRASHED', message: (error as Error)?.message ?? String(error) });
      },
    });
    logger.info({ requestId }, 'flow started');
    actor.start();
    return flowId;
  }

  private publishEvent(flow: RunningFlow, state: unknown, status: FlowStatus = 'running') {
    const event: FlowEvent = { flowId: flow.record.flowId, seq: ++flow.seq, state, status, at: new Date().toISOString() };
    flow.record = { ...flow.record, state, status, updatedAt: event.at };
    const record = flow.record;
    flow.chain = flow.chain
      .then(async () => {
        await this.records.put(flowKey(record.flowId), JSON.stringify(record));
        await this.log.append(this.subjects.flowEvents(record.flowId), JSON.stringify(event));
      })
      .catch((e: unknown) => this.options.logger.error({ err: e, flowId: record.flowId }, 'could not publish a flow event'));
  }

  private finish(flow: RunningFlow, state: unknown, status: Exclude<FlowStatus, 'running'>, output?: unknown, error?: { code: string; message: string }) {
    if (flow.record.status !== 'running') return;
    this.publishEvent(flow, state, status);
    flow.record = { ...flow.record, ...(output !== undefined ? { output } : {}), ...(error ? { error } : {}) };
    const record = flow.record;
    const done: FlowDone = { flowId: record.flowId, status, ...(output !== undefined ? { output } : {}), ...(error ? { error } : {}) };
    flow.chain = flow.chain
      .then(async () => {
        await this.records.put(flowKey(record.flowId), JSON.stringify(record));
        await this.log.append(this.subjects.flowDone(record.flowId), JSON.stringify(done));
      })
      .catch((e: unknown) => this.options.logger.error({ err: e, flowId: record.flowId }, 'could not publish a flow done message'))
      .finally(() => this.running.delete(record.flowId));
    this.options.logger.info({ flowId: record.flowId, status }, 'flow finished');
  }

  private async onToolBuild(message: BusMessage): Promise<Answer> {
    const spec = this.parse(message, ToolBuildRequestSchema, 'tool spec');
    const { requestId, ...rest } = spec;
    return { ok: true, flowId: await this.startFlow('tool-builder', { spec: rest }, requestId) };
  }

  private async onFlowStart(message: BusMessage): Promise<Answer> {
    const pattern = message.subject.split('.').pop() ?? '';
    if (!isPatternName(pattern)) {
      throw new ProtocolError('UNKNOWN_PATTERN', `no pattern "${pattern}"; one of: ${patternNames.join(', ')}`);
    }
    const request = this.parse(message, FlowStartRequestSchema, 'flow start request');
    const input = patternInputSchemas[pattern].safeParse(request.input);
    if (!input.success) throw new ProtocolError('INVALID_INPUT', `invalid ${pattern} input:\n${describeIssues(input.error)}`);
    return { ok: true, flowId: await this.startFlow(pattern, input.data as Record<string, unknown>, request.requestId) };
  }

  private async onFlowGet(message: BusMessage): Promise<Answer<FlowRecord>> {
    const { flowId } = this.parse(message, FlowIdRequestSchema, 'flow get request');
    const running = this.running.get(flowId);
    if (running) return { ok: true, ...running.record };
    const entry = await this.records.get(flowKey(flowId));
    const record = entry ? FlowRecordSchema.safeParse(entry.json()) : undefined;
    if (!record?.success) throw new ProtocolError('FLOW_NOT_FOUND', `no flow ${flowId}`);
    return { ok: true, ...record.data };
  }

  private async onCancel(message: BusMessage): Promise<Answer<{ flowId: string }> | undefined> {
    const { flowId } = this.parse(message, FlowIdRequestSchema, 'flow cancel request');
    const flow = this.running.get(flowId);
    if (flow) {
      flow.actor.stop();
      this.finish(flow, flow.record.state, 'cancelled', undefined, { code: 'CANCELLED', message: 'cancelled by request' });
      await flow.chain;
      return { ok: true, flowId };
    }
    const entry = await this.records.get(flowKey(flowId));
    if (!entry) throw new ProtocolError('FLOW_NOT_FOUND', `no flow ${flowId}`);
    const record = FlowRecordSchema.safeParse(entry.json());
    if (record.success && record.data.status !== 'running') {
      throw new ProtocolError('FLOW_FINISHED', `flow ${flowId} already ended: ${record.data.status}`);
    }
    // Running on another daemon: that one answers.
    return undefined;
  }

  private parse<T>(message: BusMessage, schema: z.ZodType<T>, what: string): T {
    if (message.data.byteLength > this.maxBytes) {
      throw new ProtocolError('TOO_LARGE', `the ${what} is ${message.data.byteLength} bytes; the limit is ${this.maxBytes}`);
    }
    let json: unknown;
    try {
      json = message.json();
    } catch (e) {
      throw new ProtocolError('BAD_JSON', `the ${what} is not JSON: ${(e as Error).message}`);
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
          : { code: 'INTERNAL' as const, message: e instanceof Error ? e.message : String(e) };
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

/** The lifecycle status of a finished flow: `failed` when its output says so, `done` otherwise. */
function outputStatus(output: unknown): 'done' | 'failed' {
  return (output as { status?: string } | undefined)?.status === 'failed' ? 'failed' : 'done';
}
