import { nanos } from '@nats-io/transport-node';
import {
  AckPolicy,
  DeliverPolicy,
  RetentionPolicy,
  StorageType,
  type Consumer,
  type ConsumerConfig,
  type ConsumerInfo,
  type ConsumerMessages,
  type JetStreamClient,
  type JetStreamManager,
  type JsMsg,
} from '@nats-io/jetstream';
import { parseJson, toBytes, type Job, type Payload, type WorkConsumer, type WorkQueue, type WorkQueueOptions } from '../Bus.js';
import { assertName, deadLetterPayload, WORK_QUEUE_DEFAULTS } from '../natsRules.js';
import type { NatsBusCore } from './core.js';
import { isNotFound } from './errors.js';
import { headersToRecord, toNatsHeaders } from './messages.js';
import { pause } from './pause.js';
import { ensureStream, overlapping, sanitize } from './streams.js';

/** How long one pull request of a work consumer waits on the server (its minimum is 1 s). */
const PULL_EXPIRES_MS = 5_000;
const DURABLE = 'workers';
const MSG_ID_HEADER = 'Nats-Msg-Id';

/** NatsBus.workQueue: the queue's stream, its durable consumer and its dead-letter stream, made or brought up to date. */
export async function openWorkQueue(bus: NatsBusCore, name: string, options: WorkQueueOptions = {}): Promise<WorkQueue> {
  bus.assertOpen();
  assertName('work queue', name);
  const settings = {
    ackWaitMs: options.ackWaitMs ?? WORK_QUEUE_DEFAULTS.ackWaitMs,
    maxDeliver: options.maxDeliver ?? WORK_QUEUE_DEFAULTS.maxDeliver,
    duplicateWindowMs: options.duplicateWindowMs ?? WORK_QUEUE_DEFAULTS.duplicateWindowMs,
    deadLetterSubject: options.deadLetterSubject ?? `${bus.prefix}.deadletter.${name}`,
  };
  bus.assertSubject(settings.deadLetterSubject, false);
  const stream = `${bus.streamPrefix}_WQ_${name}`;
  const subject = `${bus.prefix}.wq.${name}`;
  const aged = options.maxAgeMs !== undefined;
  try {
    await ensureStream(
      bus.jsm,
      {
        name: stream,
        subjects: [subject],
        retention: RetentionPolicy.Workqueue,
        storage: StorageType.File,
        duplicate_window: nanos(settings.duplicateWindowMs),
        max_age: nanos(options.maxAgeMs ?? 0),
        num_replicas: bus.replicas,
      },
      ['duplicate_window', 'num_replicas', ...(aged ? (['max_age'] as const) : [])],
    );
    await ensureConsumer(bus.jsm, stream, {
      durable_name: DURABLE,
      ack_policy: AckPolicy.Explicit,
      deliver_policy: DeliverPolicy.All,
      ack_wait: nanos(settings.ackWaitMs),
      max_deliver: settings.maxDeliver,
    });
    await ensureDeadLetterStream(bus, settings.deadLetterSubject, options.maxAgeMs);
  } catch (e) {
    throw bus.mapError(e, `set up work queue ${name}`);
  }
  return new NatsWorkQueue(bus, bus.js, name, stream, subject, { ...settings, retryAfterThrowMs: bus.retryAfterThrowMs });
}

async function ensureConsumer(jsm: JetStreamManager, stream: string, config: Partial<ConsumerConfig> & { durable_name: string }): Promise<ConsumerInfo> {
  let info: ConsumerInfo;
  try {
    info = await jsm.consumers.info(stream, config.durable_name);
  } catch (e) {
    if (!isNotFound(e)) throw e;
    try {
      return await jsm.consumers.add(stream, config);
    } catch (addError) {
      try {
        info = await jsm.consumers.info(stream, config.durable_name);
      } catch {
        throw addError;
      }
    }
  }
  if (info.config.ack_wait !== config.ack_wait || info.config.max_deliver !== config.max_deliver) {
    info = await jsm.consumers.update(stream, config.durable_name, { ack_wait: config.ack_wait!, max_deliver: config.max_deliver! });
  }
  return info;
}

/**
 * Dead letters are kept (for `maxAgeMs` when given): in the stream that already holds
 * their subject (left as it is: not ours), or in one of their own.
 */
async function ensureDeadLetterStream(bus: NatsBusCore, subject: string, maxAgeMs: number | undefined): Promise<void> {
  const own = `${bus.streamPrefix}_DLQ_${sanitize(subject)}`;
  const holders = await overlapping(bus.jsm, [subject], own);
  if (holders.length > 0) return;
  try {
    await ensureStream(
      bus.jsm,
      {
        name: own,
        subjects: [subject],
        retention: RetentionPolicy.Limits,
        storage: StorageType.File,
        max_age: nanos(maxAgeMs ?? 0),
        num_replicas: bus.replicas,
      },
      maxAgeMs === undefined ? [] : ['max_age', 'num_replicas'],
    );
  } catch (e) {
    // Raced with another process creating a stream for this subject: fine if one holds it now.
    if ((await overlapping(bus.jsm, [subject])).length === 0) throw e;
  }
}

interface NatsQueueSettings {
  ackWaitMs: number;
  maxDeliver: number;
  duplicateWindowMs: number;
  deadLetterSubject: string;
  retryAfterThrowMs: number;
}

/**
 * A work queue on a JetStream work-queue stream with one durable pull consumer shared
 * by every process. Each consume() runs `concurrency` slots and pulls only for free ones,
 * so no job waits in a client buffer while its ack wait runs.
 */
class NatsWorkQueue implements WorkQueue {
  constructor(
    private readonly bus: NatsBusCore,
    private readonly js: JetStreamClient,
    readonly name: string,
    private readonly stream: string,
    private readonly subject: string,
    private readonly settings: NatsQueueSettings,
  ) {}

  async enqueue(id: string, data: Payload, options: { headers?: Record<string, string> } = {}): Promise<{ duplicate: boolean }> {
    this.bus.assertOpen();
    try {
      const ack = await this.js.publish(this.subject, toBytes(data), { msgID: id, ...(options.headers ? { headers: toNatsHeaders(options.headers) } : {}) });
      return { duplicate: ack.duplicate };
    } catch (e) {
      throw this.bus.mapError(e, `enqueue ${id} on work queue ${this.name}`);
    }
  }

  async depth(): Promise<{ waiting: number; inFlight: number }> {
    this.bus.assertOpen();
    try {
      const info = await (await this.js.consumers.get(this.stream, DURABLE)).info();
      return { waiting: info.num_pending, inFlight: info.num_ack_pending };
    } catch (e) {
      throw this.bus.mapError(e, `read the depth of work queue ${this.name}`);
    }
  }

  async consume(handler: (job: Job) => Promise<void>, options: { concurrency: number }): Promise<WorkConsumer> {
    this.bus.assertOpen();
    let consumer: Consumer;
    try {
      consumer = await this.js.consumers.get(this.stream, DURABLE);
    } catch (e) {
      throw this.bus.mapError(e, `consume work queue ${this.name}`);
    }
    let stopped = false;
    const limit = Math.max(1, Math.floor(options.concurrency));
    /** Jobs whose handler runs. */
    const running = new Set<Promise<void>>();
    /** The pull open on the server (at most one), for stop() to close. */
    let open: ConsumerMessages | undefined;
    const wakers = new Set<() => void>();
    const wake = () => {
      for (const w of wakers) w();
    };

    // One pull at a time, for as many jobs as there are free slots: a job is delivered only
    // to a free slot (none waits in a client buffer while its ack wait runs), and a pull is
    // one request and one inbox for a whole batch rather than per job. Slots freed while a
    // pull is open are asked for by the next one, which goes out when this one is filled
    // (at once when jobs wait) or expires (when none do, so nobody waits for them).
    const pullLoop = async () => {
      let failures = 0;
      while (!stopped) {
        const free = limit - running.size;
        if (free === 0) {
          await pause(PULL_EXPIRES_MS, wakers);
          continue;
        }
        let fetch: ConsumerMessages | undefined;
        try {
          fetch = await consumer.fetch({ max_messages: free, expires: PULL_EXPIRES_MS });
          open = fetch;
          for await (const m of fetch) {
            const job = this.run(m, handler).finally(() => {
              running.delete(job);
              wake();
            });
            running.add(job);
          }
          failures = 0;
        } catch {
          // The server went away mid-pull, or JetStream is restarting: pull again after a
          // pause (the client reconnects on its own meanwhile).
          failures++;
        } finally {
          open = undefined;
          if (fetch) void fetch.close().catch(() => {});
        }
        if (failures > 0 && !stopped) await pause(Math.min(200 * 2 ** failures, 5_000), wakers);
      }
    };
    const loop = pullLoop();
    const stop = async () => {
      stopped = true;
      unregister();
      wake();
      await open?.close().catch(() => {});
      await loop;
      while (running.size > 0) await Promise.allSettled([...running]);
    };
    const unregister = this.bus.register({ stop });
    return { stop };
  }

  private async run(msg: JsMsg, handler: (job: Job) => Promise<void>): Promise<void> {
    const id = msg.headers?.get(MSG_ID_HEADER) || String(msg.seq);
    const deliveryCount = msg.info.deliveryCount;
    let settled = false;
    const settle = () => {
      const first = !settled;
      settled = true;
      return first;
    };
    const job: Job = {
      id,
      data: msg.data,
      ...(msg.headers ? { headers: headersToRecord(msg.headers) } : {}),
      json: <T>() => parseJson<T>(msg.data, `job ${id}`),
      deliveryCount,
      maxDeliver: this.settings.maxDeliver,
      ack: async () => {
        if (!settle()) return;
        // Double ack: resolves once the server has it, so the job is really done.
        try {
          await msg.ackAck();
        } catch (e) {
          throw this.bus.mapError(e, `ack job ${id}`);
        }
      },
      // nak, working and term are sent without waiting for the server: during an outage
      // they would wait for the reconnect, and a lost one only means a redelivery.
      retry: async (delayMs) => {
        // A fractional delay is sent as a float of nanoseconds, which the server reads as no delay.
        if (settle()) msg.nak(Math.max(0, Math.round(delayMs)));
      },
      working: async () => {
        if (!settled) msg.working();
      },
      deadLetter: async (reason) => {
        if (!settle()) return;
        try {
          await this.js.publish(this.settings.deadLetterSubject, deadLetterPayload(id, reason, deliveryCount, msg.data));
        } catch (e) {
          // Not stored: leave the job to its ack wait so it is not lost.
          settled = false;
          throw this.bus.mapError(e, `dead-letter job ${id}`);
        }
        // Without a reason: nats-server before 2.10 ignores "+TERM <reason>" and would redeliver.
        msg.term();
      },
    };
    try {
      await handler(job);
    } catch {
      // A handler that throws has its job tried again shortly (if it did not settle it).
      if (settle()) msg.nak(this.settings.retryAfterThrowMs);
    }
  }
}
