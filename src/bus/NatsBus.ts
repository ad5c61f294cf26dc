import { jetstream, type JetStreamManager } from '@nats-io/jetstream';
import { Kvm } from '@nats-io/kv';
import type { Msg, NatsConnection, Subscription } from '@nats-io/transport-node';
// nats-core builds a throwaway Error with a stack trace at the end of every request: made cheap there.
import './natsRequestCancel.js';
import {
  BusError,
  toBytes,
  type Bus,
  type BusMessage,
  type BusSubscription,
  type EventLog,
  type KeyValueOptions,
  type KeyValueStore,
  type MessageHandler,
  type Payload,
  type SubscribeOptions,
  type WorkQueue,
  type WorkQueueOptions,
} from './Bus.js';
import { WORK_QUEUE_DEFAULTS } from './natsRules.js';
import { openNatsConnection, toBusStatus, type NatsBusOptions, type NatsBusStatus } from './nats/connection.js';
import type { NatsBusCore } from './nats/core.js';
import { assertSubject, toBusError } from './nats/errors.js';
import { openEventLog } from './nats/eventLog.js';
import { openKeyValue } from './nats/keyValue.js';
import { NatsMessage, toNatsHeaders } from './nats/messages.js';
import { sanitize } from './nats/streams.js';
import { openWorkQueue } from './nats/workQueue.js';

/*
 * The NATS transport. This file is the Bus itself (core publish, subscribe and request, the
 * lifecycle its parts share); the parts it opens live in ./nats/: the connection and its
 * options, work queues, KV buckets, event logs, and the stream and message helpers they use.
 */

export type { NatsBusOptions, NatsBusStatus } from './nats/connection.js';

/** How long close() lets the connection drain before it just closes it. */
const CLOSE_DRAIN_MS = 2_000;

/**
 * Connects to NATS (JetStream on) and returns the bus. With `waitOnFirstConnect`
 * (the default) it waits until a server answers; without it, a server that does not
 * answer rejects with BusError `CONNECTION`.
 */
export async function connectNatsBus(options: NatsBusOptions): Promise<NatsBus> {
  const { nc, jsm } = await openNatsConnection(options);
  return new NatsBus(nc, jsm, options);
}

export class NatsBus implements Bus {
  readonly transport = 'nats' as const;
  /** What the work queues, buckets and event logs this bus opens use of it. */
  private readonly core: NatsBusCore;
  private readonly statusListeners = new Set<(status: NatsBusStatus) => void>();
  private readonly subscriptions = new Set<Subscription>();
  private readonly handlersInFlight = new Set<Promise<void>>();
  /** Work consumers, watches and replays: stopped on close(). */
  private readonly stoppables = new Set<{ stop(): Promise<void> }>();
  private closed = false;

  constructor(
    /** The underlying connection, for what the Bus contract does not cover. */
    readonly connection: NatsConnection,
    jsm: JetStreamManager,
    private readonly options: NatsBusOptions,
  ) {
    const js = jetstream(connection);
    const prefix = options.subjectPrefix ?? 'microtask';
    this.core = {
      js,
      jsm,
      kvm: new Kvm(js),
      prefix,
      streamPrefix: sanitize(prefix).toUpperCase(),
      replicas: options.replicas ?? 1,
      retryAfterThrowMs: options.retryAfterThrowMs ?? WORK_QUEUE_DEFAULTS.retryAfterThrowMs,
      assertOpen: () => this.assertOpen(),
      assertSubject: (subject, wildcards) => this.assertSubject(subject, wildcards),
      register: (stoppable) => this.register(stoppable),
      mapError: (e, what, timeoutMs) => this.mapError(e, what, timeoutMs),
      onStatus: (listener) => this.onStatus(listener),
    };
    if (options.onStatus) this.statusListeners.add(options.onStatus);
    void this.watchStatus();
  }

  /** Adds a listener of connection events; returns a function that removes it. */
  onStatus(listener: (status: NatsBusStatus) => void): () => void {
    this.statusListeners.add(listener);
    return () => this.statusListeners.delete(listener);
  }

  /** The server currently connected to (`host:port`). */
  server(): string {
    return this.connection.getServer();
  }

  async publish(subject: string, data: Payload, options: { headers?: Record<string, string>; reply?: string } = {}): Promise<void> {
    this.assertOpen();
    this.assertSubject(subject, false);
    try {
      this.connection.publish(subject, toBytes(data), {
        ...(options.reply ? { reply: options.reply } : {}),
        ...(options.headers ? { headers: toNatsHeaders(options.headers) } : {}),
      });
    } catch (e) {
      throw this.mapError(e, `publish to ${subject}`);
    }
  }

  async subscribe(subject: string, handler: MessageHandler, options: SubscribeOptions = {}): Promise<BusSubscription> {
    this.assertOpen();
    this.assertSubject(subject, true);
    let sub: Subscription;
    try {
      sub = this.connection.subscribe(subject, {
        ...(options.queue ? { queue: options.queue } : {}),
        callback: (err, msg) => {
          if (err) return;
          this.track(() => handler(new NatsMessage(msg.subject, msg.data, msg.reply, msg.headers)));
        },
      });
      this.subscriptions.add(sub);
      // Once the server has the interest, a publish from anywhere reaches it.
      await this.connection.flush();
    } catch (e) {
      throw this.mapError(e, `subscribe to ${subject}`);
    }
    return {
      unsubscribe: async () => {
        this.subscriptions.delete(sub);
        if (sub.isClosed()) return;
        // Dropped locally at once: nothing reaches the handler from here on.
        sub.unsubscribe();
      },
    };
  }

  async request(subject: string, data: Payload, options: { timeoutMs: number }): Promise<BusMessage> {
    this.assertOpen();
    this.assertSubject(subject, false);
    let msg: Msg;
    try {
      msg = await this.connection.request(subject, toBytes(data), { timeout: options.timeoutMs });
    } catch (e) {
      throw this.mapError(e, `request on ${subject}`, options.timeoutMs);
    }
    return new NatsMessage(msg.subject, msg.data, msg.reply, msg.headers);
  }

  async respond(message: BusMessage, data: Payload): Promise<void> {
    if (!message.reply) return;
    await this.publish(message.reply, data);
  }

  async workQueue(name: string, options: WorkQueueOptions = {}): Promise<WorkQueue> {
    return openWorkQueue(this.core, name, options);
  }

  async keyValue(bucket: string, options: KeyValueOptions = {}): Promise<KeyValueStore> {
    return openKeyValue(this.core, bucket, options);
  }

  async eventLog(name: string, options: { subjects: string[]; maxAgeMs?: number; maxMessageBytes?: number }): Promise<EventLog> {
    return openEventLog(this.core, name, options);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.allSettled([...this.stoppables].map((s) => s.stop()));
    for (const sub of this.subscriptions) sub.unsubscribe();
    this.subscriptions.clear();
    while (this.handlersInFlight.size > 0) await Promise.allSettled([...this.handlersInFlight]);
    if (this.connection.isClosed()) return;
    // Drain sends what is buffered; with no server to flush to it would wait for one, so not for long.
    let timer: NodeJS.Timeout | undefined;
    const gaveUp = new Promise<'timeout'>((resolve) => (timer = setTimeout(() => resolve('timeout'), CLOSE_DRAIN_MS)));
    const drained = await Promise.race([this.connection.drain().then(() => 'drained' as const, () => 'failed' as const), gaveUp]);
    clearTimeout(timer);
    if (drained !== 'drained' && !this.connection.isClosed()) await this.connection.close().catch(() => {});
  }

  // -- internals ----------------------------------------------------------------

  /** @internal */
  assertOpen(): void {
    if (this.closed) throw new BusError('CLOSED', 'the bus is closed');
  }

  /** @internal */
  register(stoppable: { stop(): Promise<void> }): () => void {
    this.stoppables.add(stoppable);
    return () => this.stoppables.delete(stoppable);
  }

  /** @internal Runs a handler without letting it throw at the bus, tracked for close(). */
  track(fn: () => void | Promise<void>): void {
    const run = (async () => {
      try {
        await fn();
      } catch {
        // A handler's failure is its own: the bus goes on.
      }
    })();
    this.handlersInFlight.add(run);
    void run.finally(() => this.handlersInFlight.delete(run));
  }

  /** @internal Turns a client error into a BusError where one fits; others pass through. */
  mapError(e: unknown, what: string, timeoutMs?: number): Error {
    return toBusError(e, what, { closed: this.closed, servers: this.options.servers }, timeoutMs);
  }

  assertSubject(subject: string, wildcards: boolean): void {
    assertSubject(subject, wildcards);
  }

  private async watchStatus(): Promise<void> {
    for await (const s of this.connection.status()) {
      const status = toBusStatus(s);
      if (!status) continue;
      for (const listener of this.statusListeners) {
        try {
          listener(status);
        } catch {
          // A listener's failure is its own.
        }
      }
    }
  }
}
