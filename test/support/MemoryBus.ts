import { randomUUID } from 'node:crypto';
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
  type KeyValueStore,
  StoredKvEntry,
  type KvEntry,
  type MessageHandler,
  type Payload,
  type SubscribeOptions,
  type WorkConsumer,
  type WorkQueue,
  type WorkQueueOptions,
} from '../../src/bus/Bus.js';
import {
  assertKvKey,
  assertName,
  assertSubject,
  deadLetterPayload,
  subjectCovers,
  subjectMatches,
  subjectsCollide,
  WORK_QUEUE_DEFAULTS,
} from '../../src/bus/natsRules.js';

/**
 * The embedded bus: everything in one process, with the semantics of NATS (core
 * subjects and queue groups, JetStream work queues, streams and KV) so that code
 * tested against it behaves the same on a real server. Nothing here is durable
 * beyond the process.
 */
export interface MemoryBusOptions {
  /** Prefix of the default dead-letter subjects (`<prefix>.deadletter.<queue>`). */
  subjectPrefix?: string;
  /** How long a job whose handler threw waits before it is delivered again. */
  retryAfterThrowMs?: number;
}

// ---------------------------------------------------------------------------------

class MemoryMessage implements BusMessage {
  constructor(
    readonly subject: string,
    readonly data: Uint8Array,
    readonly reply?: string,
    readonly headers?: Record<string, string>,
    readonly storedAt?: number,
  ) {}
  string(): string {
    return toText(this.data);
  }
  json<T = unknown>(): T {
    return parseJson<T>(this.data, `the message on ${this.subject}`);
  }
}

interface CoreSubscription {
  subject: string;
  queue?: string;
  handler: MessageHandler;
  active: boolean;
}

interface StoredMessage {
  seq: number;
  subject: string;
  data: Uint8Array;
  headers?: Record<string, string>;
  time: number;
}

interface MemoryStream {
  name: string;
  subjects: string[];
  maxAgeMs?: number;
  messages: StoredMessage[];
  lastSeq: number;
  replays: Set<Replay>;
}

/** One reader of a log: stored messages first, then live ones, one handler call at a time. */
class Replay {
  private readonly backlog: StoredMessage[] = [];
  private pumping = false;
  active = true;
  constructor(
    readonly filter: string,
    private readonly handler: MessageHandler,
  ) {}
  push(message: StoredMessage): void {
    if (!this.active || !subjectMatches(this.filter, message.subject)) return;
    this.backlog.push(message);
    if (!this.pumping) void this.pump();
  }
  private async pump(): Promise<void> {
    this.pumping = true;
    // Let the caller of `replay` / `append` return before the first handler call.
    await Promise.resolve();
    while (this.active && this.backlog.length > 0) {
      const m = this.backlog.shift()!;
      try {
        await this.handler(new MemoryMessage(m.subject, m.data, undefined, m.headers, m.time));
      } catch {
        // A throwing handler loses nothing but its own message.
      }
    }
    this.pumping = false;
  }
}

interface KvRecord {
  value: Uint8Array;
  revision: number;
  deleted: boolean;
}


interface JobState {
  id: string;
  data: Uint8Array;
  headers?: Record<string, string>;
  deliveries: number;
  state: 'ready' | 'inflight' | 'delayed' | 'done';
  current?: Delivery;
  timer?: NodeJS.Timeout;
}

interface Delivery {
  job: JobState;
  settled: boolean;
}

interface MemoryConsumer {
  handler: (job: Job) => Promise<void>;
  concurrency: number;
  running: number;
  stopped: boolean;
  inFlight: Set<Promise<void>>;
}

export class MemoryBus implements Bus {
  readonly transport = 'memory' as const;
  private readonly prefix: string;
  private readonly retryAfterThrowMs: number;
  private readonly subscriptions = new Set<CoreSubscription>();
  private readonly queueCursor = new Map<string, number>();
  private readonly inboxes = new Map<string, (message: BusMessage) => void>();
  private readonly pendingRequests = new Set<{ timer: NodeJS.Timeout; reject: (e: Error) => void }>();
  private readonly handlersInFlight = new Set<Promise<void>>();
  private readonly streams = new Map<string, MemoryStream>();
  private readonly queues = new Map<string, MemoryWorkQueue>();
  private readonly buckets = new Map<string, MemoryKeyValue>();
  private closed = false;

  constructor(options: MemoryBusOptions = {}) {
    this.prefix = options.subjectPrefix ?? 'microtask';
    this.retryAfterThrowMs = options.retryAfterThrowMs ?? WORK_QUEUE_DEFAULTS.retryAfterThrowMs;
  }

  async publish(subject: string, data: Payload, options: { headers?: Record<string, string>; reply?: string } = {}): Promise<void> {
    this.assertOpen();
    assertSubject(subject, false);
    this.route(subject, toBytes(data), options.reply, options.headers);
  }

  async subscribe(subject: string, handler: MessageHandler, options: SubscribeOptions = {}): Promise<BusSubscription> {
    this.assertOpen();
    assertSubject(subject, true);
    const sub: CoreSubscription = { subject, handler, active: true, ...(options.queue ? { queue: options.queue } : {}) };
    this.subscriptions.add(sub);
    return {
      unsubscribe: async () => {
        sub.active = false;
        this.subscriptions.delete(sub);
      },
    };
  }

  async request(subject: string, data: Payload, options: { timeoutMs: number }): Promise<BusMessage> {
    this.assertOpen();
    assertSubject(subject, false);
    // As the NATS server does: a request nobody listens to fails at once.
    if (![...this.subscriptions].some((s) => subjectMatches(s.subject, subject))) {
      throw new BusError('NO_RESPONDERS', `no responders are listening on ${subject}`);
    }
    const inbox = `_INBOX.${randomUUID().replaceAll('-', '')}`;
    return new Promise<BusMessage>((resolve, reject) => {
      const pending = {
        timer: setTimeout(() => {
          done();
          reject(new BusError('TIMEOUT', `no answer on ${subject} within ${options.timeoutMs} ms`));
        }, options.timeoutMs),
        reject: (e: Error) => {
          done();
          reject(e);
        },
      };
      const done = () => {
        clearTimeout(pending.timer);
        this.pendingRequests.delete(pending);
        this.inboxes.delete(inbox);
      };
      this.pendingRequests.add(pending);
      this.inboxes.set(inbox, (message) => {
        done();
        resolve(message);
      });
      this.route(subject, toBytes(data), inbox, undefined);
    });
  }

  async respond(message: BusMessage, data: Payload): Promise<void> {
    // A message that was not a request has nobody to answer: like NATS, nothing is sent.
    if (!message.reply) return;
    await this.publish(message.reply, data);
  }

  async workQueue(name: string, options: WorkQueueOptions = {}): Promise<WorkQueue> {
    this.assertOpen();
    assertName('work queue', name);
    const deadLetterSubject = options.deadLetterSubject ?? `${this.prefix}.deadletter.${name}`;
    assertSubject(deadLetterSubject, false, 'dead-letter subject');
    // Dead letters are kept, as the NATS transport keeps them in a stream.
    if (!this.streamCapturing(deadLetterSubject)) {
      this.createStream(`DLQ_${deadLetterSubject.replace(/[^A-Za-z0-9_-]/g, '_')}`, [deadLetterSubject]);
    }
    const settings: QueueSettings = {
      ackWaitMs: options.ackWaitMs ?? WORK_QUEUE_DEFAULTS.ackWaitMs,
      maxDeliver: options.maxDeliver ?? WORK_QUEUE_DEFAULTS.maxDeliver,
      duplicateWindowMs: options.duplicateWindowMs ?? WORK_QUEUE_DEFAULTS.duplicateWindowMs,
      deadLetterSubject,
      retryAfterThrowMs: this.retryAfterThrowMs,
    };
    let queue = this.queues.get(name);
    if (queue) queue.settings = settings;
    else {
      queue = new MemoryWorkQueue(name, settings, this);
      this.queues.set(name, queue);
    }
    return queue;
  }

  async keyValue(bucket: string): Promise<KeyValueStore> {
    this.assertOpen();
    assertName('KV bucket', bucket);
    let kv = this.buckets.get(bucket);
    if (!kv) {
      kv = new MemoryKeyValue(this);
      this.buckets.set(bucket, kv);
    }
    return kv;
  }

  async eventLog(name: string, options: { subjects: string[]; maxAgeMs?: number }): Promise<EventLog> {
    this.assertOpen();
    assertName('event log', name);
    if (options.subjects.length === 0) throw new BusError('INVALID_NAME', `event log "${name}" needs at least one subject`);
    for (const s of options.subjects) assertSubject(s, true, 'event log subject');
    const stream = this.openLogStream(name, options.subjects, options.maxAgeMs);
    return {
      append: async (subject, data) => {
        this.assertOpen();
        assertSubject(subject, false);
        if (!options.subjects.some((p) => subjectMatches(p, subject))) {
          throw new BusError('INVALID_NAME', `subject ${subject} is not one of event log "${name}"'s subjects (${options.subjects.join(', ')})`);
        }
        return this.route(subject, toBytes(data), undefined, undefined)!;
      },
      replay: async (filter, handler, replayOptions) => {
        this.assertOpen();
        assertSubject(filter, true, 'filter');
        const replay = new Replay(filter, handler);
        this.prune(stream);
        if (!replayOptions?.newOnly) for (const m of stream.messages) replay.push(m);
        stream.replays.add(replay);
        return {
          unsubscribe: async () => {
            replay.active = false;
            stream.replays.delete(replay);
          },
        };
      },
      read: async (filter) => {
        this.assertOpen();
        assertSubject(filter, true, 'filter');
        this.prune(stream);
        return stream.messages
          .filter((m) => subjectMatches(filter, m.subject))
          .map((m) => new MemoryMessage(m.subject, m.data, undefined, m.headers, m.time));
      },
      purge: async (filter) => {
        this.assertOpen();
        assertSubject(filter, true, 'filter');
        stream.messages = stream.messages.filter((m) => !subjectMatches(filter, m.subject));
      },
    };
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const queue of this.queues.values()) await queue.close();
    for (const stream of this.streams.values()) for (const r of stream.replays) r.active = false;
    for (const kv of this.buckets.values()) kv.close();
    for (const sub of this.subscriptions) sub.active = false;
    this.subscriptions.clear();
    for (const pending of [...this.pendingRequests]) pending.reject(new BusError('CLOSED', 'the bus was closed before an answer came'));
    while (this.handlersInFlight.size > 0) await Promise.allSettled([...this.handlersInFlight]);
  }

  // -- internals, used by the queue and KV classes too ---------------------------

  /** @internal */
  assertOpen(): void {
    if (this.closed) throw new BusError('CLOSED', 'the bus is closed');
  }

  /** @internal Runs a handler later, catching whatever it throws, and tracks it for close(). */
  spawn(fn: () => void | Promise<void>): Promise<void> {
    const run = (async () => {
      await Promise.resolve();
      try {
        await fn();
      } catch {
        // A handler's failure is its own: the bus goes on.
      }
    })();
    this.handlersInFlight.add(run);
    void run.finally(() => this.handlersInFlight.delete(run));
    return run;
  }

  /** Delivers to subscribers (and queue groups, one member each) and stores it in the stream that captures it. */
  private route(subject: string, data: Uint8Array, reply: string | undefined, headers: Record<string, string> | undefined): number | undefined {
    const seq = this.capture(subject, data, headers);
    const message = new MemoryMessage(subject, data, reply, headers);
    const inbox = this.inboxes.get(subject);
    if (inbox) inbox(message);
    const groups = new Map<string, CoreSubscription[]>();
    for (const sub of this.subscriptions) {
      if (!subjectMatches(sub.subject, subject)) continue;
      if (sub.queue === undefined) this.deliver(sub, message);
      else {
        const key = `${sub.queue}\u0000${sub.subject}`;
        groups.set(key, [...(groups.get(key) ?? []), sub]);
      }
    }
    for (const [key, members] of groups) {
      const cursor = this.queueCursor.get(key) ?? 0;
      this.queueCursor.set(key, cursor + 1);
      this.deliver(members[cursor % members.length]!, message);
    }
    return seq;
  }

  private deliver(sub: CoreSubscription, message: BusMessage): void {
    void this.spawn(() => (sub.active ? sub.handler(message) : undefined));
  }

  private capture(subject: string, data: Uint8Array, headers: Record<string, string> | undefined): number | undefined {
    const stream = this.streamCapturing(subject);
    if (!stream) return undefined;
    this.prune(stream);
    const stored: StoredMessage = { seq: ++stream.lastSeq, subject, data, time: Date.now(), ...(headers ? { headers } : {}) };
    stream.messages.push(stored);
    for (const replay of stream.replays) replay.push(stored);
    return stored.seq;
  }

  private streamCapturing(subject: string): MemoryStream | undefined {
    for (const stream of this.streams.values()) if (stream.subjects.some((p) => subjectMatches(p, subject))) return stream;
    return undefined;
  }

  private createStream(name: string, subjects: string[], maxAgeMs?: number): MemoryStream {
    const stream: MemoryStream = { name, subjects: [...subjects], messages: [], lastSeq: 0, replays: new Set(), ...(maxAgeMs ? { maxAgeMs } : {}) };
    this.streams.set(name, stream);
    return stream;
  }

  /**
   * The log's stream: its own when it exists or nothing else holds its subjects; the
   * one stream that already holds all of them otherwise (a dead-letter subject, say).
   * Two streams never share a subject, as in JetStream.
   */
  private openLogStream(name: string, subjects: string[], maxAgeMs: number | undefined): MemoryStream {
    const own = this.streams.get(`LOG_${name}`);
    const others = [...this.streams.values()].filter(
      (s) => s !== own && s.subjects.some((p) => subjects.some((q) => subjectsCollide(p, q))),
    );
    if (own && others.length === 0) {
      for (const s of subjects) if (!own.subjects.includes(s)) own.subjects.push(s);
      if (maxAgeMs !== undefined) own.maxAgeMs = maxAgeMs;
      return own;
    }
    if (!own && others.length === 0) return this.createStream(`LOG_${name}`, subjects, maxAgeMs);
    const holder = others.length === 1 && !own ? others[0]! : undefined;
    if (holder && subjects.every((q) => holder.subjects.some((p) => subjectCovers(p, q)))) return holder;
    throw new BusError(
      'INVALID_NAME',
      `event log "${name}" subjects (${subjects.join(', ')}) overlap with ${others.map((s) => `${s.name} (${s.subjects.join(', ')})`).join(', ')}`,
    );
  }

  private prune(stream: MemoryStream): void {
    if (!stream.maxAgeMs) return;
    const oldest = Date.now() - stream.maxAgeMs;
    while (stream.messages.length > 0 && stream.messages[0]!.time < oldest) stream.messages.shift();
  }
}

// ---------------------------------------------------------------------------------

interface QueueSettings {
  ackWaitMs: number;
  maxDeliver: number;
  duplicateWindowMs: number;
  deadLetterSubject: string;
  retryAfterThrowMs: number;
}

/**
 * A JetStream-like work queue: jobs in order, each with one delivery at a time, an
 * ack timer per delivery, and `maxDeliver` deliveries at most.
 */
class MemoryWorkQueue implements WorkQueue {
  private readonly jobs: JobState[] = [];
  private readonly seen = new Map<string, number>();
  private readonly consumers: MemoryConsumer[] = [];
  private readonly timers = new Set<NodeJS.Timeout>();
  private nextConsumer = 0;
  private dispatchScheduled = false;

  constructor(
    readonly name: string,
    public settings: QueueSettings,
    private readonly bus: MemoryBus,
  ) {}

  async depth(): Promise<{ waiting: number; inFlight: number }> {
    const inFlight = this.jobs.filter((j) => j.state === 'inflight').length;
    return { waiting: this.jobs.filter((j) => j.state === 'ready' || j.state === 'delayed').length, inFlight };
  }

  async enqueue(id: string, data: Payload, options: { headers?: Record<string, string> } = {}): Promise<{ duplicate: boolean }> {
    this.bus.assertOpen();
    const now = Date.now();
    for (const [seenId, at] of this.seen) {
      if (at > now - this.settings.duplicateWindowMs) break;
      this.seen.delete(seenId);
    }
    if (this.seen.has(id)) return { duplicate: true };
    this.seen.set(id, now);
    this.jobs.push({ id, data: toBytes(data), ...(options.headers ? { headers: { ...options.headers } } : {}), deliveries: 0, state: 'ready' });
    this.scheduleDispatch();
    return { duplicate: false };
  }

  async consume(handler: (job: Job) => Promise<void>, options: { concurrency: number }): Promise<WorkConsumer> {
    this.bus.assertOpen();
    const consumer: MemoryConsumer = {
      handler,
      concurrency: Math.max(1, Math.floor(options.concurrency)),
      running: 0,
      stopped: false,
      inFlight: new Set(),
    };
    this.consumers.push(consumer);
    this.scheduleDispatch();
    return { stop: () => this.stopConsumer(consumer) };
  }

  async close(): Promise<void> {
    await Promise.all(this.consumers.map((c) => this.stopConsumer(c)));
    for (const timer of this.timers) clearTimeout(timer);
    this.timers.clear();
  }

  private async stopConsumer(consumer: MemoryConsumer): Promise<void> {
    consumer.stopped = true;
    const i = this.consumers.indexOf(consumer);
    if (i >= 0) this.consumers.splice(i, 1);
    while (consumer.inFlight.size > 0) await Promise.allSettled([...consumer.inFlight]);
  }

  private scheduleDispatch(): void {
    if (this.dispatchScheduled) return;
    this.dispatchScheduled = true;
    queueMicrotask(() => {
      this.dispatchScheduled = false;
      this.dispatch();
    });
  }

  private dispatch(): void {
    for (const job of this.jobs) {
      if (job.state !== 'ready') continue;
      const consumer = this.freeConsumer();
      if (!consumer) return;
      this.deliver(job, consumer);
    }
  }

  /** Round robin over consumers with a free slot, so two consumers share the work. */
  private freeConsumer(): MemoryConsumer | undefined {
    for (let n = 0; n < this.consumers.length; n++) {
      const c = this.consumers[(this.nextConsumer + n) % this.consumers.length]!;
      if (!c.stopped && c.running < c.concurrency) {
        this.nextConsumer = (this.nextConsumer + n + 1) % this.consumers.length;
        return c;
      }
    }
    return undefined;
  }

  private deliver(job: JobState, consumer: MemoryConsumer): void {
    job.deliveries++;
    job.state = 'inflight';
    const delivery: Delivery = { job, settled: false };
    job.current = delivery;
    this.armAckTimer(delivery);
    const handle: Job = {
      id: job.id,
      data: job.data,
      ...(job.headers ? { headers: job.headers } : {}),
      json: <T>() => parseJson<T>(job.data, `job ${job.id}`),
      deliveryCount: job.deliveries,
      maxDeliver: this.settings.maxDeliver,
      ack: async () => this.ack(delivery),
      retry: async (delayMs) => this.retry(delivery, delayMs),
      working: async () => {
        if (this.isCurrent(delivery)) this.armAckTimer(delivery);
      },
      deadLetter: async (reason) => this.deadLetter(delivery, handle.deliveryCount, reason),
    };
    consumer.running++;
    const run = (async () => {
      await Promise.resolve();
      try {
        await consumer.handler(handle);
      } catch {
        // A handler that throws has its job tried again shortly (if it did not settle it).
        if (this.isCurrent(delivery)) this.retry(delivery, this.settings.retryAfterThrowMs);
      } finally {
        consumer.running--;
        this.scheduleDispatch();
      }
    })();
    consumer.inFlight.add(run);
    void run.finally(() => consumer.inFlight.delete(run));
  }

  private isCurrent(delivery: Delivery): boolean {
    return !delivery.settled && delivery.job.current === delivery && delivery.job.state === 'inflight';
  }

  private armAckTimer(delivery: Delivery): void {
    const job = delivery.job;
    this.setJobTimer(job, this.settings.ackWaitMs, () => {
      if (!this.isCurrent(delivery)) return;
      // Neither acked nor working: the delivery is lost and the job goes back, unless
      // that was its last delivery.
      job.current = undefined;
      this.requeueOrDrop(job);
    });
  }

  private setJobTimer(job: JobState, ms: number, fn: () => void): void {
    this.clearJobTimer(job);
    const timer = setTimeout(() => {
      this.timers.delete(timer);
      job.timer = undefined;
      fn();
    }, ms);
    timer.unref();
    job.timer = timer;
    this.timers.add(timer);
  }

  private clearJobTimer(job: JobState): void {
    if (!job.timer) return;
    clearTimeout(job.timer);
    this.timers.delete(job.timer);
    job.timer = undefined;
  }

  private requeueOrDrop(job: JobState): void {
    if (job.deliveries >= this.settings.maxDeliver) this.remove(job);
    else {
      job.state = 'ready';
      this.scheduleDispatch();
    }
  }

  private remove(job: JobState): void {
    this.clearJobTimer(job);
    job.state = 'done';
    job.current = undefined;
    const i = this.jobs.indexOf(job);
    if (i >= 0) this.jobs.splice(i, 1);
  }

  private ack(delivery: Delivery): void {
    if (delivery.settled) return;
    delivery.settled = true;
    // Even a late ack (after the job went back) means the work is done, as in JetStream.
    if (delivery.job.state !== 'done') this.remove(delivery.job);
  }

  private retry(delivery: Delivery, delayMs: number): void {
    if (!this.isCurrent(delivery)) return;
    delivery.settled = true;
    const job = delivery.job;
    job.current = undefined;
    if (job.deliveries >= this.settings.maxDeliver) {
      this.remove(job);
      return;
    }
    job.state = 'delayed';
    this.setJobTimer(job, Math.max(0, delayMs), () => {
      if (job.state !== 'delayed') return;
      job.state = 'ready';
      this.scheduleDispatch();
    });
  }

  private async deadLetter(delivery: Delivery, deliveryCount: number, reason: string): Promise<void> {
    if (delivery.settled || delivery.job.state === 'done') return;
    delivery.settled = true;
    const job = delivery.job;
    this.remove(job);
    await this.bus.publish(this.settings.deadLetterSubject, deadLetterPayload(job.id, reason, deliveryCount, job.data));
  }
}

// ---------------------------------------------------------------------------------

/** A KV bucket: one revision counter for the bucket, delete markers, watchers. */
class MemoryKeyValue implements KeyValueStore {
  private revision = 0;
  private readonly records = new Map<string, KvRecord>();
  private readonly watchers = new Set<{ key: string; handler: (entry: KvEntry | undefined) => void; active: boolean }>();
  private readonly updateWatchers = new Set<{ handler: (key: string, entry: KvEntry | undefined) => void; active: boolean }>();

  constructor(private readonly bus: MemoryBus) {}

  async get(key: string): Promise<KvEntry | undefined> {
    this.bus.assertOpen();
    assertKvKey(key);
    return this.entry(key);
  }

  async put(key: string, value: Payload): Promise<number> {
    this.bus.assertOpen();
    assertKvKey(key);
    return this.write(key, toBytes(value), false);
  }

  async create(key: string, value: Payload): Promise<number> {
    this.bus.assertOpen();
    assertKvKey(key);
    const record = this.records.get(key);
    if (record && !record.deleted) throw new BusError('KV_EXISTS', `key ${key} already exists (revision ${record.revision})`);
    return this.write(key, toBytes(value), false);
  }

  async update(key: string, value: Payload, revision: number): Promise<number> {
    this.bus.assertOpen();
    assertKvKey(key);
    const current = this.records.get(key)?.revision ?? 0;
    if (revision <= 0 || current !== revision) {
      throw new BusError('KV_WRONG_REVISION', `key ${key} is at revision ${current}, not ${revision}: read it again and retry`);
    }
    return this.write(key, toBytes(value), false);
  }

  async delete(key: string): Promise<void> {
    this.bus.assertOpen();
    assertKvKey(key);
    this.write(key, new Uint8Array(), true);
  }

  async keys(filter = '>'): Promise<string[]> {
    this.bus.assertOpen();
    assertSubject(filter, true, 'key filter');
    return [...this.records.entries()]
      .filter(([key, r]) => !r.deleted && subjectMatches(filter, key))
      .sort(([, a], [, b]) => a.revision - b.revision)
      .map(([key]) => key);
  }

  async entries(filter = '>'): Promise<KvEntry[]> {
    return (await this.keys(filter)).map((key) => this.entry(key)).filter((e): e is KvEntry => e !== undefined);
  }

  async watch(key: string, handler: (entry: KvEntry | undefined) => void): Promise<BusSubscription> {
    this.bus.assertOpen();
    assertKvKey(key);
    const watcher = { key, handler, active: true };
    const initial = this.entry(key);
    void this.bus.spawn(() => (watcher.active ? handler(initial) : undefined));
    this.watchers.add(watcher);
    return {
      unsubscribe: async () => {
        watcher.active = false;
        this.watchers.delete(watcher);
      },
    };
  }

  async watchUpdates(handler: (key: string, entry: KvEntry | undefined) => void): Promise<BusSubscription> {
    this.bus.assertOpen();
    // One process, no connection to lose: no gap, ever.
    const watcher = { handler, active: true };
    this.updateWatchers.add(watcher);
    return {
      unsubscribe: async () => {
        watcher.active = false;
        this.updateWatchers.delete(watcher);
      },
    };
  }

  close(): void {
    for (const w of this.watchers) w.active = false;
    this.watchers.clear();
    for (const w of this.updateWatchers) w.active = false;
    this.updateWatchers.clear();
  }

  private entry(key: string): KvEntry | undefined {
    const record = this.records.get(key);
    return record && !record.deleted ? new StoredKvEntry(key, record.value, record.revision) : undefined;
  }

  private write(key: string, value: Uint8Array, deleted: boolean): number {
    const revision = ++this.revision;
    // Re-insert so that Map order follows the last write, as a KV stream does.
    this.records.delete(key);
    this.records.set(key, { value, revision, deleted });
    const entry = deleted ? undefined : new StoredKvEntry(key, value, revision);
    for (const w of this.watchers) {
      if (w.key === key) void this.bus.spawn(() => (w.active ? w.handler(entry) : undefined));
    }
    for (const w of this.updateWatchers) void this.bus.spawn(() => (w.active ? w.handler(key, entry) : undefined));
    return revision;
  }
}
