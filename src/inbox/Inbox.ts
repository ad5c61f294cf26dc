import type { KeptEvent } from '../contracts/waits.js';
import { SentEventSchema } from '../contracts/waits.js';
import { z } from 'zod';
import { depthExceeds, MAX_JSON_DEPTH } from '../jsonInput.js';

/**
 * Where events sent to flows are kept (a person's answer, an outside system's event)
 * until the process that runs the flow applies them: sent while no process runs it, an
 * event waits here and is applied on resume, in the order sent. The flow host applies an
 * event once per id (src/flowHost.ts `send`); the inbox only keeps and delivers.
 *
 * - BusInbox: a JetStream stream (NATS), subjects `<prefix>.flow.<flowId>.inbox`, so any
 *   NATS client can publish to it, daemon running or not.
 * - LmdbInbox: the state directory's database (embedded mode, several processes).
 *
 * One contract suite checks both (test/inbox/contract.ts).
 */
export interface Inbox {
  /** Keeps an event for a flow; resolves once it is durable. */
  append(flowId: string, event: KeptEvent): Promise<void>;
  /** The events kept for a flow, oldest first (unreadable ones skipped, reported). */
  read(flowId: string): Promise<KeptEvent[]>;
  /** The events kept for every flow, by flow, each flow's oldest first: one pass (a daemon resuming all its flows). */
  readAll(): Promise<Map<string, KeptEvent[]>>;
  /**
   * Tells `handler` of each event appended from now on, for any flow, in the order each
   * flow's were appended, until stopped (a reconnect loses none).
   */
  follow(handler: (flowId: string, event: KeptEvent) => void): Promise<{ stop(): Promise<void> }>;
  /** Forgets the events of these flows. */
  remove(flowIds: readonly string[]): Promise<void>;
  /** Forgets the events sent before `before` (retention); resolves with how many. */
  prune(before: Date): Promise<number>;
}

/** An event as kept: what was sent, and when (epoch ms). */
export const KeptEventSchema = SentEventSchema.extend({ sentAt: z.number().optional() });

/** Parses a kept event; undefined (and `onError` told why) when it is not one. */
export function parseKeptEvent(flowId: string, text: string, onError: (message: string) => void): KeptEvent | undefined {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    onError(`an event kept for flow ${flowId} is not JSON; skipped`);
    return undefined;
  }
  // flow.send refuses a request this deep; an inbox takes plain publishes from any client.
  // Applied, such data overflowed the stack in the host (XState copies a context
  // recursively) half-way through the event: the flow then refused every later answer.
  if (depthExceeds(json, MAX_JSON_DEPTH)) {
    onError(`an event kept for flow ${flowId} is nested deeper than ${MAX_JSON_DEPTH} levels of arrays and objects (the limit); skipped`);
    return undefined;
  }
  const parsed = KeptEventSchema.safeParse(json);
  if (!parsed.success) {
    onError(`an event kept for flow ${flowId} is not {eventId, type, data?}: ${parsed.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ')}; skipped`);
    return undefined;
  }
  return parsed.data as KeptEvent;
}
