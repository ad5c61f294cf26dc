import type { Bus, EventLog } from '../bus/Bus.js';
import { subjects, type Subjects } from '../bus/subjects.js';
import type { KeptEvent } from '../contracts/waits.js';
import { parseKeptEvent, type Inbox } from './Inbox.js';

/** An answer is a few lines of feedback: the stream refuses a publish larger than flow.send takes. */
const MAX_EVENT_BYTES = 256 * 1024;

/**
 * The inbox on the bus: a JetStream stream of `<prefix>.flow.<flowId>.inbox`. A client
 * with no code of this project publishes an event there (`nats pub`), kept whether or
 * not a daemon runs; the daemon that runs the flow follows the stream.
 */
export class BusInbox implements Inbox {
  private constructor(
    private readonly log: EventLog,
    private readonly names: Subjects,
    private readonly onError: (message: string) => void,
  ) {}

  static async open(bus: Bus, options: { subjectPrefix?: string; retentionMs?: number; onError?: (message: string) => void } = {}): Promise<BusInbox> {
    const names = subjects(options.subjectPrefix);
    const log = await bus.eventLog(names.inboxLog, {
      subjects: [names.flowInbox('*')],
      ...(options.retentionMs ? { maxAgeMs: options.retentionMs, maxMessageBytes: MAX_EVENT_BYTES } : {}),
    });
    return new BusInbox(log, names, options.onError ?? (() => undefined));
  }

  async append(flowId: string, event: KeptEvent): Promise<void> {
    await this.log.append(this.names.flowInbox(flowId), JSON.stringify({ ...event, sentAt: event.sentAt ?? Date.now() }));
  }

  async read(flowId: string): Promise<KeptEvent[]> {
    const out: KeptEvent[] = [];
    for (const message of await this.log.read(this.names.flowInbox(flowId))) {
      const event = parseKeptEvent(flowId, message.string(), this.onError);
      if (event) out.push(stamped(event, message.storedAt));
    }
    return out;
  }

  async readAll(): Promise<Map<string, KeptEvent[]>> {
    const out = new Map<string, KeptEvent[]>();
    for (const message of await this.log.read(this.names.flowInbox('*'))) {
      const flowId = this.names.flowOfInbox(message.subject);
      if (!flowId) continue;
      const event = parseKeptEvent(flowId, message.string(), this.onError);
      if (!event) continue;
      const events = out.get(flowId) ?? [];
      events.push(stamped(event, message.storedAt));
      out.set(flowId, events);
    }
    return out;
  }

  async follow(handler: (flowId: string, event: KeptEvent) => void): Promise<{ stop(): Promise<void> }> {
    // New ones only: what is stored is read by whoever resumes a flow (`read`), and the
    // host applies an id once. (Replaying the whole stream at every start made a daemon
    // whose inbox a client had flooded a slow consumer that never finished starting.)
    const subscription = await this.log.replay(this.names.flowInbox('*'), (message) => {
      const flowId = this.names.flowOfInbox(message.subject);
      if (!flowId) return;
      const event = parseKeptEvent(flowId, message.string(), this.onError);
      if (event) handler(flowId, stamped(event, message.storedAt));
    }, { newOnly: true });
    return { stop: () => subscription.unsubscribe() };
  }

  /** The stream's max age (the retention, set at open) drops old events: nothing to do here. */
  async prune(_before: Date): Promise<number> {
    return 0;
  }

  async remove(flowIds: readonly string[]): Promise<void> {
    for (const flowId of flowIds) await this.log.purge(this.names.flowInbox(flowId));
  }
}

/**
 * When an event was sent is when the stream stored it, by the server's clock: a `sentAt`
 * in what a client published is not taken (it could backdate an answer past a deadline).
 */
const stamped = (event: KeptEvent, storedAt: number | undefined): KeptEvent => {
  const { sentAt: _claimed, ...rest } = event;
  return storedAt === undefined ? rest : { ...rest, sentAt: storedAt };
};
