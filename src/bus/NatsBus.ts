import { readFile } from 'node:fs/promises';
import {
  connect,
  credsAuthenticator,
  errors,
  headers as natsHeaders,
  nanos,
  nkeyAuthenticator,
  type Authenticator,
  type Msg,
  type MsgHdrs,
  type NatsConnection,
  type NodeConnectionOptions,
  type Status,
  type Subscription,
} from '@nats-io/transport-node';
import {
  AckPolicy,
  DeliverPolicy,
  JetStreamApiError,
  jetstream,
  jetstreamManager,
  RetentionPolicy,
  StorageType,
  type Consumer,
  type ConsumerConfig,
  type ConsumerInfo,
  type ConsumerMessages,
  type JetStreamClient,
  type JetStreamManager,
  type JsMsg,
  type StreamConfig,
  type StreamInfo,
} from '@nats-io/jetstream';
import { KvWatchInclude, Kvm, type KV } from '@nats-io/kv';
// nats-core builds a throwaway Error with a stack trace at the end of every request: made cheap there.
import './natsRequestCancel.js';
import {
  BusError,
  parseJson,
  toBytes,
  toText,
  type Bus,
  type BusMessage,
  type BusSubscription,
  type EventLog,
  type Job,
  type KeyValueOptions,
  type KeyValueStore,
  type KvEntry,
  type MessageHandler,
  type Payload,
  type SubscribeOptions,
  type WorkConsumer,
  type WorkQueue,
  type WorkQueueOptions,
} from './Bus.js';
import {
  assertKvKey,
  assertName,
  deadLetterPayload,
  isValidSubject,
  subjectCovers,
  subjectMatches,
  subjectsCollide,
  WORK_QUEUE_DEFAULTS,
} from './natsRules.js';

export interface NatsBusOptions {
  /** `nats://host:port` URLs (or `host:port`). */
  servers: string[];
  /** The client name the server shows in its monitoring pages. */
  name?: string;
  /** Authentication: one of token, user+pass, an nkey seed, or a creds file (JWT + seed). */
  token?: string;
  user?: string;
  pass?: string;
  nkeySeed?: string;
  credsFile?: string;
  tls?: { caFile?: string; certFile?: string; keyFile?: string };
  /**
   * Stream and bucket names derive from it: work queue `tasks` is stream
   * `MICROTASK_WQ_tasks` on subject `microtask.wq.tasks`, bucket `flows` is KV bucket
   * `MICROTASK_flows`, event log `flows` is stream `MICROTASK_LOG_flows`.
   */
  subjectPrefix?: string;
  /** Waits between reconnect attempts (plus up to 100 ms of jitter). Default 2000. */
  reconnectTimeWaitMs?: number;
  /** Default -1: reconnect forever. */
  maxReconnectAttempts?: number;
  /** Default true: keep trying until the first connection succeeds. */
  waitOnFirstConnect?: boolean;
  /** Handshake timeout per connection attempt, in ms. */
  connectTimeoutMs?: number;
  /** Delay before a job whose handler threw is delivered again. Default 500. */
  retryAfterThrowMs?: number;
  /** Connection events (disconnect, reconnect, errors), for the caller to log. */
  onStatus?: (status: NatsBusStatus) => void;
  /**
   * Copies of each stream and bucket on a cluster (1 to 5; default 1, what a single server
   * allows). Set when one is created, and brought to it when its owner opens it with limits.
   */
  replicas?: number;
}

export type NatsBusStatus =
  | { type: 'disconnect'; server: string }
  | { type: 'reconnecting' }
  | { type: 'reconnect'; server: string }
  | { type: 'ldm'; server: string }
  | { type: 'staleConnection' }
  | { type: 'slowConsumer'; subject: string; pending: number }
  | { type: 'error'; error: Error }
  | { type: 'close' };

/** How long one pull request of a work consumer waits on the server (its minimum is 1 s). */
const PULL_EXPIRES_MS = 5_000;
const DURABLE = 'workers';
/** How long close() lets the connection drain before it just closes it. */
const CLOSE_DRAIN_MS = 2_000;
const MSG_ID_HEADER = 'Nats-Msg-Id';
/** JetStream API error codes used below. */
const SUBJECTS_OVERLAP = 10065;
const WRONG_LAST_SEQUENCE = 10071;

/**
 * Connects to NATS (JetStream on) and returns the bus. With `waitOnFirstConnect`
 * (the default) it waits until a server answers; without it, a server that does not
 * answer rejects with BusError `CONNECTION`.
 */
export async function connectNatsBus(options: NatsBusOptions): Promise<NatsBus> {
  const servers = options.servers;
  const where = servers.join(', ');
  if (servers.length === 0) throw new BusError('CONNECTION', 'no NATS server given: set NATS_URL, e.g. nats://127.0.0.1:4222');
  const connectionOptions: NodeConnectionOptions = {
    servers,
    maxReconnectAttempts: options.maxReconnectAttempts ?? -1,
    reconnectTimeWait: options.reconnectTimeWaitMs ?? 2_000,
    waitOnFirstConnect: options.waitOnFirstConnect ?? true,
    // Without this every request and JetStream publish builds two Errors (a stack trace each)
    // in case it fails: about a sixth of the daemon's CPU. Our errors name the subject instead.
    noAsyncTraces: true,
    ...(options.name ? { name: options.name } : {}),
    ...(options.connectTimeoutMs ? { timeout: options.connectTimeoutMs } : {}),
    ...(options.token ? { token: options.token } : {}),
    ...(options.user ? { user: options.user } : {}),
    ...(options.pass !== undefined ? { pass: options.pass } : {}),
    ...(options.tls ? { tls: { ...options.tls } } : {}),
  };
  const authenticators: Authenticator[] = [];
  if (options.nkeySeed) authenticators.push(nkeyAuthenticator(new TextEncoder().encode(options.nkeySeed)));
  if (options.credsFile) {
    let creds: Uint8Array;
    try {
      creds = await readFile(options.credsFile);
    } catch (e) {
      throw new BusError('CONNECTION', `cannot read the NATS creds file ${options.credsFile}: ${(e as Error).message}`, { cause: e });
    }
    authenticators.push(credsAuthenticator(creds));
  }
  if (authenticators.length > 0) connectionOptions.authenticator = authenticators;

  let nc: NatsConnection;
  try {
    nc = await connect(connectionOptions);
  } catch (e) {
    throw new BusError('CONNECTION', `cannot connect to NATS at ${where}: ${(e as Error).message}`, { cause: e });
  }
  let jsm: JetStreamManager;
  try {
    jsm = await jetstreamManager(nc);
  } catch (e) {
    await nc.close().catch(() => {});
    throw new BusError(
      'CONNECTION',
      `JetStream is not available on NATS at ${where} (${(e as Error).message}): start nats-server with JetStream on (-js)`,
      { cause: e },
    );
  }
  return new NatsBus(nc, jsm, options);
}

class NatsMessage implements BusMessage {
  readonly headers?: Record<string, string>;
  readonly reply?: string;
  readonly storedAt?: number;
  constructor(
    readonly subject: string,
    readonly data: Uint8Array,
    reply: string | undefined,
    hdrs: MsgHdrs | undefined,
    storedAt?: number,
  ) {
    if (reply) this.reply = reply;
    if (hdrs) this.headers = headersToRecord(hdrs);
    if (storedAt !== undefined) this.storedAt = storedAt;
  }
  string(): string {
    return toText(this.data);
  }
  json<T = unknown>(): T {
    return parseJson<T>(this.data, `the message on ${this.subject}`);
  }
}

function headersToRecord(hdrs: MsgHdrs): Record<string, string> {
  const record: Record<string, string> = {};
  for (const [key, values] of hdrs) if (values[0] !== undefined) record[key] = values[0];
  return record;
}

class NatsKvEntry implements KvEntry {
  constructor(
    readonly key: string,
    readonly value: Uint8Array,
    readonly revision: number,
  ) {}
  string(): string {
    return toText(this.value);
  }
  json<T = unknown>(): T {
    return parseJson<T>(this.value, `the value of ${this.key}`);
  }
}

const sanitize = (s: string) => s.replace(/[^A-Za-z0-9_-]/g, '_');

export class NatsBus implements Bus {
  readonly transport = 'nats' as const;
  private readonly js: JetStreamClient;
  private readonly kvm: Kvm;
  private readonly prefix: string;
  /** The prefix as it appears in stream names. */
  private readonly streamPrefix: string;
  private readonly retryAfterThrowMs: number;
  private readonly replicas: number;
  private readonly statusListeners = new Set<(status: NatsBusStatus) => void>();
  private readonly subscriptions = new Set<Subscription>();
  private readonly handlersInFlight = new Set<Promise<void>>();
  /** Work consumers, watches and replays: stopped on close(). */
  private readonly stoppables = new Set<{ stop(): Promise<void> }>();
  private closed = false;

  constructor(
    /** The underlying connection, for what the Bus contract does not cover. */
    readonly connection: NatsConnection,
    private readonly jsm: JetStreamManager,
    private readonly options: NatsBusOptions,
  ) {
    this.js = jetstream(connection);
    this.kvm = new Kvm(this.js);
    this.prefix = options.subjectPrefix ?? 'microtask';
    this.streamPrefix = sanitize(this.prefix).toUpperCase();
    this.retryAfterThrowMs = options.retryAfterThrowMs ?? WORK_QUEUE_DEFAULTS.retryAfterThrowMs;
    this.replicas = options.replicas ?? 1;
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
    this.assertOpen();
    assertName('work queue', name);
    const settings = {
      ackWaitMs: options.ackWaitMs ?? WORK_QUEUE_DEFAULTS.ackWaitMs,
      maxDeliver: options.maxDeliver ?? WORK_QUEUE_DEFAULTS.maxDeliver,
      duplicateWindowMs: options.duplicateWindowMs ?? WORK_QUEUE_DEFAULTS.duplicateWindowMs,
      deadLetterSubject: options.deadLetterSubject ?? `${this.prefix}.deadletter.${name}`,
    };
    this.assertSubject(settings.deadLetterSubject, false);
    const stream = `${this.streamPrefix}_WQ_${name}`;
    const subject = `${this.prefix}.wq.${name}`;
    const aged = options.maxAgeMs !== undefined;
    try {
      await this.ensureStream(
        {
          name: stream,
          subjects: [subject],
          retention: RetentionPolicy.Workqueue,
          storage: StorageType.File,
          duplicate_window: nanos(settings.duplicateWindowMs),
          max_age: nanos(options.maxAgeMs ?? 0),
          num_replicas: this.replicas,
        },
        ['duplicate_window', 'num_replicas', ...(aged ? (['max_age'] as const) : [])],
      );
      await this.ensureConsumer(stream, {
        durable_name: DURABLE,
        ack_policy: AckPolicy.Explicit,
        deliver_policy: DeliverPolicy.All,
        ack_wait: nanos(settings.ackWaitMs),
        max_deliver: settings.maxDeliver,
      });
      await this.ensureDeadLetterStream(settings.deadLetterSubject, options.maxAgeMs);
    } catch (e) {
      throw this.mapError(e, `set up work queue ${name}`);
    }
    return new NatsWorkQueue(this, this.js, name, stream, subject, { ...settings, retryAfterThrowMs: this.retryAfterThrowMs });
  }

  async keyValue(bucket: string, options: KeyValueOptions = {}): Promise<KeyValueStore> {
    this.assertOpen();
    assertName('KV bucket', bucket);
    const name = `${this.streamPrefix}_${bucket}`;
    let kv: KV;
    try {
      // An existing bucket is opened as it is (create does not change it): its limits are set below.
      kv = await this.kvm.create(name, { history: 1, replicas: this.replicas, ...(options.maxAgeMs ? { ttl: options.maxAgeMs } : {}) });
    } catch (e) {
      // Another process may have created it between our look-up and our create.
      try {
        kv = await this.kvm.open(name);
        await kv.status();
      } catch {
        throw this.mapError(e, `open KV bucket ${bucket}`);
      }
    }
    if (options.maxAgeMs !== undefined) {
      // Made by an earlier version (kept forever) or with other limits: brought to these.
      const limits: Partial<StreamConfig> = { max_age: nanos(options.maxAgeMs), max_msgs_per_subject: 1, num_replicas: this.replicas };
      try {
        await this.updateStream(`KV_${name}`, limits);
      } catch (e) {
        throw this.mapError(e, `set the limits of KV bucket ${bucket}`);
      }
    }
    return new NatsKeyValue(this, kv);
  }

  async eventLog(name: string, options: { subjects: string[]; maxAgeMs?: number; maxMessageBytes?: number }): Promise<EventLog> {
    this.assertOpen();
    assertName('event log', name);
    if (options.subjects.length === 0) throw new BusError('INVALID_NAME', `event log "${name}" needs at least one subject`);
    for (const s of options.subjects) this.assertSubject(s, true);
    let stream: string;
    try {
      stream = await this.openLogStream(name, options.subjects, options.maxAgeMs, options.maxMessageBytes);
    } catch (e) {
      throw this.mapError(e, `set up event log ${name}`);
    }
    return {
      append: async (subject, data) => {
        this.assertOpen();
        this.assertSubject(subject, false);
        if (!options.subjects.some((p) => subjectMatches(p, subject))) {
          throw new BusError('INVALID_NAME', `subject ${subject} is not one of event log "${name}"'s subjects (${options.subjects.join(', ')})`);
        }
        try {
          return (await this.js.publish(subject, toBytes(data))).seq;
        } catch (e) {
          throw this.mapError(e, `append to event log ${name}`);
        }
      },
      replay: async (filter, handler, replayOptions) => {
        this.assertOpen();
        this.assertSubject(filter, true);
        return this.replay(stream, filter, handler, replayOptions?.newOnly === true);
      },
      read: async (filter) => {
        this.assertOpen();
        this.assertSubject(filter, true);
        return this.readStored(stream, filter);
      },
      purge: async (filter) => {
        this.assertOpen();
        this.assertSubject(filter, true);
        try {
          await this.jsm.streams.purge(stream, { filter });
        } catch (e) {
          throw this.mapError(e, `purge ${filter} from ${stream}`);
        }
      },
    };
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
    if (e instanceof BusError) return e;
    const err = e instanceof Error ? e : new Error(String(e));
    const cause = (err as { cause?: unknown }).cause;
    if (err instanceof errors.NoRespondersError || (err instanceof errors.RequestError && err.isNoResponders())) {
      return new BusError('NO_RESPONDERS', `cannot ${what}: nobody is listening`, { cause: err });
    }
    if (err instanceof errors.TimeoutError || cause instanceof errors.TimeoutError) {
      const within = timeoutMs === undefined ? 'in time' : `within ${timeoutMs} ms`;
      return new BusError('TIMEOUT', `cannot ${what}: no answer ${within}`, { cause: err });
    }
    if (err instanceof errors.ClosedConnectionError || err instanceof errors.DrainingConnectionError) {
      return new BusError(this.closed ? 'CLOSED' : 'CONNECTION', `cannot ${what}: the NATS connection is closed`, { cause: err });
    }
    if (err instanceof errors.InvalidSubjectError || err instanceof errors.InvalidArgumentError) {
      return new BusError('INVALID_NAME', `cannot ${what}: ${err.message}`, { cause: err });
    }
    if (err instanceof errors.ConnectionError || (err instanceof errors.RequestError && /disconnect|closed/.test(err.message))) {
      if (this.closed) return new BusError('CLOSED', `cannot ${what}: the bus was closed`, { cause: err });
      return new BusError('CONNECTION', `cannot ${what}: lost the connection to NATS at ${this.options.servers.join(', ')} (${err.message})`, {
        cause: err,
      });
    }
    return err;
  }

  assertSubject(subject: string, wildcards: boolean): void {
    if (!isValidSubject(subject, { wildcards })) {
      throw new BusError(
        'INVALID_NAME',
        `invalid subject "${subject}": use dot-separated tokens without spaces` +
          (wildcards ? ', with "*" for one token and ">" only at the end' : ' and without wildcards'),
      );
    }
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

  /**
   * Creates the stream if missing and reuses it if present (updating the given
   * fields when they differ). Two processes may race to create it: the loser looks it up.
   */
  private async ensureStream(config: Partial<StreamConfig> & { name: string }, updatable: (keyof StreamConfig)[] = []): Promise<StreamInfo> {
    let info: StreamInfo;
    try {
      info = await this.jsm.streams.info(config.name);
    } catch (e) {
      if (!isNotFound(e)) throw e;
      try {
        return await this.jsm.streams.add(config);
      } catch (addError) {
        try {
          info = await this.jsm.streams.info(config.name);
        } catch {
          throw addError;
        }
      }
    }
    const changes = Object.fromEntries(updatable.filter((k) => info.config[k] !== config[k]).map((k) => [k, config[k]]));
    if (Object.keys(changes).length > 0) info = await this.jsm.streams.update(config.name, changes);
    return info;
  }

  /** Brings an existing stream to `limits`, updating only what differs (no update, no write, when all match). */
  private async updateStream(name: string, limits: Partial<StreamConfig>): Promise<StreamInfo> {
    const info = await this.jsm.streams.info(name);
    const config = info.config as unknown as Record<string, unknown>;
    const changes = Object.fromEntries(Object.entries(limits).filter(([k, v]) => config[k] !== v));
    return Object.keys(changes).length > 0 ? this.jsm.streams.update(name, changes) : info;
  }

  private async ensureConsumer(stream: string, config: Partial<ConsumerConfig> & { durable_name: string }): Promise<ConsumerInfo> {
    let info: ConsumerInfo;
    try {
      info = await this.jsm.consumers.info(stream, config.durable_name);
    } catch (e) {
      if (!isNotFound(e)) throw e;
      try {
        return await this.jsm.consumers.add(stream, config);
      } catch (addError) {
        try {
          info = await this.jsm.consumers.info(stream, config.durable_name);
        } catch {
          throw addError;
        }
      }
    }
    if (info.config.ack_wait !== config.ack_wait || info.config.max_deliver !== config.max_deliver) {
      info = await this.jsm.consumers.update(stream, config.durable_name, { ack_wait: config.ack_wait!, max_deliver: config.max_deliver! });
    }
    return info;
  }

  /** Streams (names) whose subjects overlap any of `subjects`. */
  private async overlapping(subjects: string[], except?: string): Promise<StreamInfo[]> {
    const found: StreamInfo[] = [];
    for await (const info of this.jsm.streams.list()) {
      if (info.config.name === except) continue;
      if ((info.config.subjects ?? []).some((p) => subjects.some((q) => subjectsCollide(p, q)))) found.push(info);
    }
    return found;
  }

  /**
   * Dead letters are kept (for `maxAgeMs` when given): in the stream that already holds
   * their subject (left as it is: not ours), or in one of their own.
   */
  private async ensureDeadLetterStream(subject: string, maxAgeMs: number | undefined): Promise<void> {
    const own = `${this.streamPrefix}_DLQ_${sanitize(subject)}`;
    const holders = await this.overlapping([subject], own);
    if (holders.length > 0) return;
    try {
      await this.ensureStream(
        {
          name: own,
          subjects: [subject],
          retention: RetentionPolicy.Limits,
          storage: StorageType.File,
          max_age: nanos(maxAgeMs ?? 0),
          num_replicas: this.replicas,
        },
        maxAgeMs === undefined ? [] : ['max_age', 'num_replicas'],
      );
    } catch (e) {
      // Raced with another process creating a stream for this subject: fine if one holds it now.
      if ((await this.overlapping([subject])).length === 0) throw e;
    }
  }

  /**
   * The log's stream: its own (`<PREFIX>_LOG_<name>`) when it exists or nothing else
   * holds its subjects; the one stream that already holds all of them otherwise (a
   * dead-letter stream, say). JetStream never lets two streams share a subject.
   */
  private async openLogStream(name: string, subjects: string[], maxAgeMs: number | undefined, maxMessageBytes?: number): Promise<string> {
    const own = `${this.streamPrefix}_LOG_${name}`;
    const config: Partial<StreamConfig> & { name: string } = {
      name: own,
      subjects,
      retention: RetentionPolicy.Limits,
      storage: StorageType.File,
      max_age: maxAgeMs ? nanos(maxAgeMs) : 0,
      num_replicas: this.replicas,
      ...(maxMessageBytes ? { max_msg_size: maxMessageBytes } : {}),
    };
    const others = await this.overlapping(subjects, own);
    if (others.length === 0) {
      try {
        // Opened without a max age (a client reading the log): the one its owner set stays.
        const info = await this.ensureStream(config, maxAgeMs === undefined ? [] : ['max_age', 'num_replicas', ...(maxMessageBytes ? (['max_msg_size'] as const) : [])]);
        const missing = subjects.filter((s) => !info.config.subjects.includes(s));
        if (missing.length > 0) await this.jsm.streams.update(own, { subjects: [...info.config.subjects, ...missing] });
        return own;
      } catch (e) {
        if (!(e instanceof JetStreamApiError && e.code === SUBJECTS_OVERLAP)) throw e;
        // Someone else created a stream holding these subjects meanwhile: look again.
      }
    }
    const holders = others.length > 0 ? others : await this.overlapping(subjects, own);
    const holder = holders.length === 1 ? holders[0]! : undefined;
    if (holder && subjects.every((q) => holder.config.subjects.some((p) => subjectCovers(p, q)))) return holder.config.name;
    throw new BusError(
      'INVALID_NAME',
      `event log "${name}" subjects (${subjects.join(', ')}) overlap with ${holders
        .map((s) => `${s.config.name} (${s.config.subjects.join(', ')})`)
        .join(', ')}`,
    );
  }

  /**
   * The last stored message of each subject matching `filter` (a KV bucket's current
   * entries), mapped by `pick` (undefined: left out); counted first, so an empty read does
   * not wait for a fetch to expire.
   */
  async readLastPerSubject<T>(stream: string, filter: string, pick: (subject: string, data: Uint8Array, seq: number, operation: string | undefined) => T | undefined): Promise<T[]> {
    const info = await this.jsm.streams.info(stream, { subjects_filter: filter });
    const subjects = Object.keys(info.state.subjects ?? {}).length;
    if (subjects === 0) return [];
    const consumer = await this.js.consumers.get(stream, { deliver_policy: DeliverPolicy.LastPerSubject, filter_subjects: filter });
    const out: T[] = [];
    for (;;) {
      const batch = await consumer.fetch({ max_messages: 1000, expires: 2_000 });
      let pending = -1;
      for await (const m of batch) {
        const picked = pick(m.subject, m.data, m.seq, m.headers?.get('KV-Operation') || undefined);
        if (picked !== undefined) out.push(picked);
        pending = m.info.pending;
        if (pending === 0) break;
      }
      if (pending <= 0) return out;
    }
  }

  /** The stored messages matching `filter`: counted first, so an empty read does not wait for a fetch to expire. */
  private async readStored(stream: string, filter: string): Promise<BusMessage[]> {
    try {
      const info = await this.jsm.streams.info(stream, { subjects_filter: filter });
      const stored = Object.values(info.state.subjects ?? {}).reduce((a, b) => a + b, 0);
      if (stored === 0) return [];
      const consumer = await this.js.consumers.get(stream, {
        deliver_policy: DeliverPolicy.All,
        ...(filter === '>' ? {} : { filter_subjects: filter }),
      });
      const out: BusMessage[] = [];
      // Messages may be appended while we read: stop at the first one with nothing pending after it.
      for (;;) {
        const batch = await consumer.fetch({ max_messages: 1000, expires: 2_000 });
        let pending = -1;
        for await (const m of batch) {
          out.push(new NatsMessage(m.subject, m.data, undefined, m.headers, Math.floor(m.info.timestampNanos / 1e6)));
          pending = m.info.pending;
          if (pending === 0) break;
        }
        if (pending <= 0) return out;
      }
    } catch (e) {
      throw this.mapError(e, `read ${filter} from ${stream}`);
    }
  }

  /** An ordered consumer from the first message: stored ones, then live ones, one handler call at a time. */
  private async replay(stream: string, filter: string, handler: MessageHandler, newOnly = false): Promise<BusSubscription> {
    let messages: ConsumerMessages;
    try {
      const consumer = await this.js.consumers.get(stream, {
        deliver_policy: newOnly ? DeliverPolicy.New : DeliverPolicy.All,
        ...(filter === '>' ? {} : { filter_subjects: filter }),
      });
      messages = await consumer.consume();
    } catch (e) {
      throw this.mapError(e, `replay ${filter} from ${stream}`);
    }
    const loop = (async () => {
      for await (const m of messages) {
        try {
          await handler(new NatsMessage(m.subject, m.data, undefined, m.headers, Math.floor(m.info.timestampNanos / 1e6)));
        } catch {
          // A throwing handler loses nothing but its own message.
        }
      }
    })().catch(() => {});
    const stop = async () => {
      unregister();
      await messages.close().catch(() => {});
      await loop;
    };
    const unregister = this.register({ stop });
    return { unsubscribe: stop };
  }
}

function toNatsHeaders(record: Record<string, string>): MsgHdrs {
  const h = natsHeaders();
  for (const [k, v] of Object.entries(record)) h.set(k, v);
  return h;
}

function isNotFound(e: unknown): boolean {
  return e instanceof JetStreamApiError && e.status === 404;
}

function toBusStatus(s: Status): NatsBusStatus | undefined {
  switch (s.type) {
    case 'disconnect':
    case 'reconnect':
    case 'ldm':
      return { type: s.type, server: s.server };
    case 'reconnecting':
    case 'staleConnection':
    case 'close':
      return { type: s.type };
    case 'slowConsumer':
      return { type: 'slowConsumer', subject: s.sub.getSubject(), pending: s.pending };
    case 'error':
      return { type: 'error', error: s.error };
    default:
      return undefined;
  }
}

// ---------------------------------------------------------------------------------

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
    private readonly bus: NatsBus,
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

/** Waits `ms` (without keeping the process alive), or less when woken by stop(). */
function pause(ms: number, wakers: Set<() => void>): Promise<void> {
  return new Promise((resolve) => {
    const wake = () => {
      clearTimeout(timer);
      wakers.delete(wake);
      resolve();
    };
    const timer = setTimeout(wake, ms);
    timer.unref();
    wakers.add(wake);
  });
}

// ---------------------------------------------------------------------------------

class NatsKeyValue implements KeyValueStore {
  constructor(
    private readonly bus: NatsBus,
    private readonly kv: KV,
  ) {}

  async get(key: string): Promise<KvEntry | undefined> {
    this.bus.assertOpen();
    assertKvKey(key);
    try {
      const e = await this.kv.get(key);
      return e && e.operation === 'PUT' ? new NatsKvEntry(e.key, e.value, e.revision) : undefined;
    } catch (e) {
      throw this.bus.mapError(e, `get ${key}`);
    }
  }

  async put(key: string, value: Payload): Promise<number> {
    this.bus.assertOpen();
    assertKvKey(key);
    try {
      return await this.kv.put(key, value);
    } catch (e) {
      throw this.bus.mapError(e, `put ${key}`);
    }
  }

  async create(key: string, value: Payload): Promise<number> {
    this.bus.assertOpen();
    assertKvKey(key);
    try {
      return await this.kv.create(key, value);
    } catch (e) {
      if (e instanceof JetStreamApiError && e.code === WRONG_LAST_SEQUENCE) {
        throw new BusError('KV_EXISTS', `key ${key} already exists`, { cause: e });
      }
      throw this.bus.mapError(e, `create ${key}`);
    }
  }

  async update(key: string, value: Payload, revision: number): Promise<number> {
    this.bus.assertOpen();
    assertKvKey(key);
    if (!(revision > 0)) throw new BusError('KV_WRONG_REVISION', `key ${key} cannot be at revision ${revision}: use create for a new key`);
    try {
      return await this.kv.update(key, value, revision);
    } catch (e) {
      if (e instanceof JetStreamApiError && e.code === WRONG_LAST_SEQUENCE) {
        throw new BusError('KV_WRONG_REVISION', `key ${key} is not at revision ${revision}: read it again and retry`, { cause: e });
      }
      throw this.bus.mapError(e, `update ${key}`);
    }
  }

  async delete(key: string): Promise<void> {
    this.bus.assertOpen();
    assertKvKey(key);
    try {
      await this.kv.delete(key);
    } catch (e) {
      throw this.bus.mapError(e, `delete ${key}`);
    }
  }

  async entries(filter = '>'): Promise<KvEntry[]> {
    this.bus.assertOpen();
    this.bus.assertSubject(filter, true);
    // The bucket's stream, last message per key: one consumer, fetched in batches.
    const { stream, prefix } = this.kv as unknown as { stream: string; prefix: string };
    try {
      return await this.bus.readLastPerSubject(stream, `${prefix}.${filter}`, (subject, data, seq, operation) =>
        operation === 'DEL' || operation === 'PURGE' ? undefined : new NatsKvEntry(subject.slice(prefix.length + 1), data, seq),
      );
    } catch (e) {
      throw this.bus.mapError(e, `read the entries ${filter}`);
    }
  }

  async keys(filter = '>'): Promise<string[]> {
    this.bus.assertOpen();
    this.bus.assertSubject(filter, true);
    const keys: string[] = [];
    try {
      for await (const k of await this.kv.keys(filter)) keys.push(k);
    } catch (e) {
      throw this.bus.mapError(e, `list keys ${filter}`);
    }
    return keys;
  }

  /**
   * The current entry first (read after noting the bucket's last revision, so nothing
   * falls between), then a watcher from the revision after it.
   */
  async watch(key: string, handler: (entry: KvEntry | undefined) => void): Promise<BusSubscription> {
    this.bus.assertOpen();
    assertKvKey(key);
    let iterator: Awaited<ReturnType<KV['watch']>>;
    let initial: KvEntry | undefined;
    try {
      const lastSeq = (await this.kv.status()).streamInfo.state.last_seq;
      initial = await this.get(key);
      iterator = await this.kv.watch({ key, resumeFromRevision: Math.max(lastSeq, initial?.revision ?? 0) + 1 });
    } catch (e) {
      throw this.bus.mapError(e, `watch ${key}`);
    }
    const loop = (async () => {
      try {
        handler(initial);
      } catch {
        // the handler's own failure
      }
      for await (const e of iterator) {
        try {
          handler(e.operation === 'PUT' ? new NatsKvEntry(e.key, e.value, e.revision) : undefined);
        } catch {
          // the handler's own failure
        }
      }
    })().catch(() => {});
    const stop = async () => {
      unregister();
      iterator.stop();
      await loop;
    };
    const unregister = this.bus.register({ stop });
    return { unsubscribe: stop };
  }

  /**
   * One ordered consumer on the whole bucket, new writes only. The client recreates it on
   * its own when it notices a gap, but it notices one only when the next write comes (or
   * heartbeats go missing): a write made while this connection was down may wait for
   * another. So every reconnect is a gap for the caller; and a watch that ends (its
   * consumer not recreated: the stream gone, the server away too long) is opened again,
   * with backoff, then reported as a gap too.
   */
  async watchUpdates(handler: (key: string, entry: KvEntry | undefined) => void, options: { onGap?: () => void } = {}): Promise<BusSubscription> {
    this.bus.assertOpen();
    const open = () => this.kv.watch({ key: '>', include: KvWatchInclude.UpdatesOnly });
    let iterator: Awaited<ReturnType<KV['watch']>> | undefined;
    try {
      iterator = await open();
    } catch (e) {
      throw this.bus.mapError(e, 'watch the bucket');
    }
    let stopped = false;
    const wakers = new Set<() => void>();
    const gap = () => {
      if (stopped) return;
      try {
        options.onGap?.();
      } catch {
        // the caller's own failure
      }
    };
    const offStatus = this.bus.onStatus((status) => {
      if (status.type === 'reconnect') gap();
    });
    const loop = (async () => {
      for (let failures = 0; !stopped; ) {
        if (iterator) {
          try {
            for await (const e of iterator) {
              try {
                handler(e.key, e.operation === 'PUT' ? new NatsKvEntry(e.key, e.value, e.revision) : undefined);
              } catch {
                // the handler's own failure
              }
            }
          } catch {
            // The watch failed: opened again below.
          }
          iterator = undefined;
          if (stopped) return;
        }
        await pause(Math.min(30_000, 250 * 2 ** failures), wakers);
        if (stopped) return;
        try {
          iterator = await open();
          if (stopped) return iterator.stop();
          failures = 0;
          gap();
        } catch {
          failures++;
        }
      }
    })();
    const stop = async () => {
      if (stopped) return;
      stopped = true;
      unregister();
      offStatus();
      for (const wake of [...wakers]) wake();
      iterator?.stop();
      await loop;
    };
    const unregister = this.bus.register({ stop });
    return { unsubscribe: stop };
  }
}
