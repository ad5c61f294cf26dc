import { randomUUID } from 'node:crypto';
import type { Bus } from '../bus/Bus.js';
import { ClientError, MicrotaskClient } from '../client.js';
import type { FlowDone } from '../daemon/protocol.js';
import { UsageError } from './exitCodes.js';

/**
 * What the CLI asks a daemon over NATS, through the typed client (src/client.ts) any
 * program may use: its errors become the CLI's. A request nobody answers says how to start
 * a daemon; a refusal is the user's to fix (exit 2); the daemon's own failure is not.
 */
export class DaemonClient {
  private readonly client: MicrotaskClient;

  constructor(bus: Bus, subjectPrefix: string, timeoutMs = 10_000) {
    this.client = new MicrotaskClient(bus, { subjectPrefix, timeoutMs });
  }

  /** Publishes a tool-build request (or, with options the request has no room for, a tool-builder flow start). */
  async build(spec: Record<string, unknown>, extra: { threshold?: number; budget?: unknown }): Promise<string> {
    const requestId = randomUUID();
    if (extra.threshold === undefined && extra.budget === undefined) return cliErrors(this.client.buildTool(spec, { requestId }));
    return cliErrors(this.client.start('tool-builder', { spec, ...extra }, { requestId }));
  }

  /** Sends an event to a flow (flow.send): resolves once the flow's inbox keeps it; `duplicate` when applied already. */
  async send(flowId: string, event: { eventId: string; type: string; data?: unknown }): Promise<{ duplicate: boolean }> {
    return cliErrors(this.client.send(flowId, event));
  }

  async cancel(flowId: string): Promise<void> {
    await cliErrors(this.client.cancel(flowId));
  }

  /** Resolves with the flow's done message (replayed when it ended already), until `signal` aborts. */
  done(flowId: string, signal?: AbortSignal): Promise<FlowDone> {
    return this.client.done(flowId, signal ? { signal } : {});
  }
}

async function cliErrors<T>(request: Promise<T>): Promise<T> {
  try {
    return await request;
  } catch (e) {
    if (!(e instanceof ClientError)) throw e;
    // The client's message already says which subject and how to start a daemon.
    if (e.code === 'NO_DAEMON' || e.code === 'TIMEOUT') throw new UsageError(e.message, 'NO_DAEMON');
    if (e.code === 'INTERNAL' || e.code === 'BAD_REPLY') throw new Error(`the daemon failed: ${e.message}`);
    throw new UsageError(`the daemon refused: ${e.code}: ${e.message}`, e.code);
  }
}
