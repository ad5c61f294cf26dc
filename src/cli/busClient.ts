import { randomUUID } from 'node:crypto';
import { BusError, type Bus } from '../bus/Bus.js';
import { subjects } from '../bus/subjects.js';
import type { Answer, FlowDone } from '../daemon/protocol.js';
import { UsageError } from './exitCodes.js';

/**
 * What the CLI asks a daemon over NATS: the protocol of docs/protocol.md, the same any
 * NATS client speaks. A request nobody answers says how to start a daemon.
 */
export class DaemonClient {
  private readonly names;

  constructor(
    private readonly bus: Bus,
    subjectPrefix: string,
    private readonly timeoutMs = 10_000,
  ) {
    this.names = subjects(subjectPrefix);
  }

  /** Publishes a tool-build request (or, with options the request has no room for, a tool-builder flow start). */
  async build(spec: Record<string, unknown>, extra: { threshold?: number; budget?: unknown }): Promise<string> {
    const requestId = randomUUID();
    if (extra.threshold === undefined && extra.budget === undefined) {
      return this.ask(this.names.toolBuildRequest, { ...spec, requestId });
    }
    return this.ask(this.names.flowStart('tool-builder'), { input: { spec, ...extra }, requestId });
  }

  /** Sends an event to a flow (flow.send): resolves once the flow's inbox keeps it; `duplicate` when applied already. */
  async send(flowId: string, event: { eventId: string; type: string; data?: unknown }): Promise<{ duplicate: boolean }> {
    const answer = await this.request<{ duplicate?: boolean }>(this.names.flowSend, { flowId, ...event });
    return { duplicate: answer.duplicate === true };
  }

  async cancel(flowId: string): Promise<string> {
    return this.ask(this.names.flowCancel, { flowId });
  }

  /** Resolves with the flow's done message (replayed when it ended already), until `signal` aborts. */
  async done(flowId: string, signal?: AbortSignal): Promise<FlowDone> {
    const log = await this.bus.eventLog(this.names.flowLog, { subjects: this.names.flowLogSubjects });
    let resolve!: (done: FlowDone) => void;
    let reject!: (e: unknown) => void;
    const result = new Promise<FlowDone>((res, rej) => ((resolve = res), (reject = rej)));
    const subscription = await log.replay(this.names.flowDone(flowId), async (m) => resolve(m.json<FlowDone>()));
    const onAbort = () => reject(signal?.reason);
    signal?.addEventListener('abort', onAbort, { once: true });
    try {
      return await result;
    } finally {
      signal?.removeEventListener('abort', onAbort);
      await subscription.unsubscribe();
    }
  }

  private async ask(subject: string, body: unknown): Promise<string> {
    return (await this.request<object>(subject, body)).flowId;
  }

  private async request<T extends object>(subject: string, body: unknown): Promise<T & { flowId: string }> {
    let answer: Answer<T & { flowId: string }>;
    try {
      answer = (await this.bus.request(subject, JSON.stringify(body), { timeoutMs: this.timeoutMs })).json();
    } catch (e) {
      if (e instanceof BusError && (e.code === 'NO_RESPONDERS' || e.code === 'TIMEOUT')) {
        throw new UsageError(
          `no daemon answered on ${subject} (${e.code === 'TIMEOUT' ? 'timed out' : 'nobody listening'}): start one with \`microtask daemon\` against the same NATS_URL and MICROTASK_SUBJECT_PREFIX`,
          'NO_DAEMON',
        );
      }
      throw e;
    }
    if (!answer.ok) {
      const usage = answer.error.code !== 'INTERNAL';
      if (usage) throw new UsageError(`the daemon refused: ${answer.error.code}: ${answer.error.message}`, answer.error.code);
      throw new Error(`the daemon failed: ${answer.error.message}`);
    }
    return answer;
  }
}
