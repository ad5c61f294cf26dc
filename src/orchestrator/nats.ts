import type { BusSubscription } from '../bus/Bus.js';
import { BusError } from '../bus/Bus.js';
import { ClientError, MicrotaskClient, type FlowRecord as FlowGetAnswer } from '../client.js';
import type { FlowEvent } from '../contracts/flowEvents.js';
import type { FlowRecord } from '../daemon/protocol.js';
import { Channel, inOrder } from './flowFeed.js';
import { coded, OrchestratorError, type NatsOrchestratorOptions, type Orchestrator } from './Orchestrator.js';

/**
 * The orchestrator over NATS: each call is the typed client's (src/client.ts) request to
 * the daemons; nothing runs in this process. `list` reads the snapshots bucket the daemons
 * share, as `microtask flows` does.
 */
export class NatsOrchestrator implements Orchestrator {
  readonly mode = 'nats' as const;
  private closed: Promise<void> | undefined;
  /** Aborted on close: what `done` and `events` wait on stops waiting. */
  private readonly closing = new AbortController();
  private readonly readers = new Set<Channel<FlowEvent>>();

  private constructor(private readonly client: MicrotaskClient) {}

  static async open(options: NatsOrchestratorOptions): Promise<NatsOrchestrator> {
    const { natsUrl, subjectPrefix, timeoutMs, stateDir: _none, ...auth } = options;
    const servers = typeof natsUrl === 'string' ? natsUrl.split(',').map((s) => s.trim()).filter(Boolean) : [...(natsUrl ?? [])];
    if (servers.length === 0) throw new OrchestratorError('INVALID_OPTIONS', 'natsUrl: a NATS server such as nats://127.0.0.1:4222 (or stateDir, to run flows in this process)');
    try {
      const client = await MicrotaskClient.connect({
        ...auth,
        servers,
        name: auth.name ?? 'microtask-orchestrator',
        ...(subjectPrefix ? { subjectPrefix } : {}),
        ...(timeoutMs ? { timeoutMs } : {}),
      });
      return new NatsOrchestrator(client);
    } catch (e) {
      if (e instanceof BusError && e.code === 'CONNECTION') {
        throw new OrchestratorError('NATS_UNREACHABLE', `cannot reach NATS at ${servers.join(', ')}: ${e.message}`, { cause: e });
      }
      throw e;
    }
  }

  start(flowName: string, input: unknown, options: { requestId?: string } = {}): Promise<string> {
    return this.call(() => this.client.start(flowName, input, options.requestId ? { requestId: options.requestId } : {}));
  }

  get(flowId: string): Promise<FlowRecord | undefined> {
    return this.call(() => this.record(flowId));
  }

  list(filter: { status?: FlowRecord['status'] | readonly FlowRecord['status'][] } = {}) {
    return this.call(() => this.client.list(filter.status ? { status: filter.status } : {}));
  }

  cancel(flowId: string): Promise<void> {
    return this.call(() => this.client.cancel(flowId));
  }

  send(flowId: string, event: { type: string; data?: unknown; eventId?: string }) {
    return this.call(() => this.client.send(flowId, event));
  }

  events(flowId: string): AsyncIterable<FlowEvent> {
    return { [Symbol.asyncIterator]: () => inOrder(this.source(flowId))[Symbol.asyncIterator]() };
  }

  /** The flow's events from its first, replayed from the daemons' stream, then live. */
  private async *source(flowId: string): AsyncGenerator<FlowEvent> {
    this.assertOpen();
    if (!(await coded(() => this.record(flowId)))) throw new OrchestratorError('FLOW_NOT_FOUND', `no flow ${flowId}`);
    const reader = new Channel<FlowEvent>();
    this.readers.add(reader);
    let subscription: BusSubscription | undefined;
    try {
      subscription = await coded(() => this.client.events(flowId, (event) => reader.push(event)));
      yield* reader;
    } finally {
      this.readers.delete(reader);
      await reader.return();
      await subscription?.unsubscribe().catch(() => undefined);
    }
  }

  done(flowId: string): Promise<FlowRecord> {
    return this.call(async () => {
      const record = await this.record(flowId);
      if (!record) throw new OrchestratorError('FLOW_NOT_FOUND', `no flow ${flowId}`);
      if (record.status !== 'running') return record;
      try {
        await this.client.done(flowId, { signal: this.closing.signal });
      } catch (e) {
        if (this.closing.signal.aborted) throw new OrchestratorError('CLOSED', 'the orchestrator is closed');
        throw e;
      }
      const final = await this.record(flowId);
      if (!final) throw new OrchestratorError('FLOW_NOT_FOUND', `flow ${flowId} ended, and its record is gone (pruned)`);
      return final;
    });
  }

  close(): Promise<void> {
    this.closed ??= (async () => {
      const error = new OrchestratorError('CLOSED', 'the orchestrator is closed');
      this.closing.abort(error);
      for (const reader of this.readers) reader.fail(error);
      await this.client.close();
    })();
    return this.closed;
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  /** flow.get, its answer without the envelope; undefined for FLOW_NOT_FOUND. */
  private async record(flowId: string): Promise<FlowRecord | undefined> {
    let answer: FlowGetAnswer;
    try {
      answer = await this.client.get(flowId);
    } catch (e) {
      if (e instanceof ClientError && e.code === 'FLOW_NOT_FOUND') return undefined;
      throw e;
    }
    const { ok: _ok, ...record } = answer;
    return record;
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
}
