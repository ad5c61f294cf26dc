/**
 * The bus contract: what the daemon, the workers and the microtask proxy need from a
 * message bus. Two transports implement it with the same semantics: NATS (core
 * pub/sub and request/reply, JetStream work queues, streams and KV) and in-memory (the
 * embedded default, one process). One contract test suite runs against both
 * (test/bus/contract.ts).
 */

export type Payload = Uint8Array | string;

export interface BusMessage {
  subject: string;
  data: Uint8Array;
  /** Where an answer goes, for request/reply. */
  reply?: string;
  headers?: Record<string, string>;
  /** For a message read from an event log: when the log stored it (epoch ms), by the server's clock, not the sender's. */
  storedAt?: number;
  string(): string;
  /** The payload parsed as JSON; rejects with a BusError `NOT_JSON` that says why. */
  json<T = unknown>(): T;
}

export type MessageHandler = (message: BusMessage) => void | Promise<void>;

export interface BusSubscription {
  unsubscribe(): Promise<void>;
}

export interface SubscribeOptions {
  /** Subscribers in one queue group share the messages: each goes to one of them. */
  queue?: string;
}

export interface WorkQueueOptions {
  /** A job not acked (nor `working()`) within this is delivered again. */
  ackWaitMs?: number;
  /** Deliveries at most; the handler sees `deliveryCount` and `maxDeliver` to decide when to dead-letter. */
  maxDeliver?: number;
  /** An `enqueue` with an id seen within this window is dropped as a duplicate. */
  duplicateWindowMs?: number;
  /** Where dead letters are published (durably): `{id, reason, deliveryCount, data}` as JSON. */
  deadLetterSubject?: string;
  /**
   * Jobs (and dead letters) older than this are dropped, taken or not; 0: kept until taken.
   * Given: an existing queue is brought to it; unset: left as it is.
   */
  maxAgeMs?: number;
}

/** One delivery of a job. */
export interface Job {
  id: string;
  data: Uint8Array;
  /** The headers it was enqueued with (a trace context: `traceparent`), when it had any. */
  headers?: Record<string, string>;
  json<T = unknown>(): T;
  /** 1 on the first delivery. */
  deliveryCount: number;
  maxDeliver: number;
  /** Done: never delivered again. */
  ack(): Promise<void>;
  /** Not done: deliver it again after `delayMs` (counts as a delivery). */
  retry(delayMs: number): Promise<void>;
  /** Still at it: the ack wait starts again, so a long job is not delivered twice. */
  working(): Promise<void>;
  /** Give up: publish it to the dead-letter subject with the reason, never deliver it again. */
  deadLetter(reason: string): Promise<void>;
}

export interface WorkConsumer {
  /** Stops taking jobs and waits for the handlers in flight to settle. */
  stop(): Promise<void>;
}

/** How much a bucket keeps. Each key keeps its last value only (history 1): nothing reads older ones. */
export interface KeyValueOptions {
  /**
   * A key not written for this long is dropped (NATS: the bucket's max age, for every key:
   * nats-server 2.9 has no per-key TTL); 0: kept until deleted. Given: an existing bucket
   * is brought to it; unset: an existing bucket is left as it is (a reader's open).
   */
  maxAgeMs?: number;
}

export interface WorkQueue {
  readonly name: string;
  /**
   * Adds a job; `duplicate` when a job with this id was enqueued within the duplicate window.
   * `headers` travel with it (NATS message headers) to the handler that takes it.
   */
  enqueue(id: string, data: Payload, options?: { headers?: Record<string, string> }): Promise<{ duplicate: boolean }>;
  /**
   * Runs `handler` for each job, at most `concurrency` at once, across every consumer of
   * the queue (in any process). A handler that throws has its job retried after a short delay.
   */
  consume(handler: (job: Job) => Promise<void>, options: { concurrency: number }): Promise<WorkConsumer>;
  /**
   * Jobs not yet taken (`waiting`) and taken but not settled (`inFlight`), across every
   * consumer. A job waiting for its retry delay counts as waiting in memory, in flight on NATS.
   */
  depth(): Promise<{ waiting: number; inFlight: number }>;
}

export interface KvEntry {
  key: string;
  value: Uint8Array;
  /** Increases with every write to the bucket. */
  revision: number;
  string(): string;
  json<T = unknown>(): T;
}

export interface KeyValueStore {
  get(key: string): Promise<KvEntry | undefined>;
  /** Writes whatever is there; returns the new revision. */
  put(key: string, value: Payload): Promise<number>;
  /** Writes only when the key does not exist; rejects with `KV_EXISTS` otherwise. */
  create(key: string, value: Payload): Promise<number>;
  /** Compare-and-set: writes only when the key is at `revision`; rejects with `KV_WRONG_REVISION` otherwise. */
  update(key: string, value: Payload, revision: number): Promise<number>;
  delete(key: string): Promise<void>;
  /** Keys, optionally those matching a subject-style filter (`flows.>`, `a.*`). */
  keys(filter?: string): Promise<string[]>;
  /**
   * The current entries of the keys matching `filter`, read in one pass (a consumer of the
   * bucket's last values, not a request per key): for a scan of many (100,000 flows resumed).
   */
  entries(filter?: string): Promise<KvEntry[]>;
  /** The key's current entry (or undefined), then every change; undefined again when deleted. */
  watch(key: string, handler: (entry: KvEntry | undefined) => void): Promise<BusSubscription>;
  /**
   * Every write to any key of the bucket from now on (not the entries already there), with
   * its key; undefined for a delete. Resolves once the server has the watch: a write after
   * that reaches `handler`, or, when it may have been missed (the connection was lost, the
   * watch had to be opened again), `onGap` is called after the watch is back: read again
   * the keys that matter. One watch serves many keys (one per process, not one per key).
   */
  watchUpdates(handler: (key: string, entry: KvEntry | undefined) => void, options?: { onGap?: () => void }): Promise<BusSubscription>;
}

/** A durable, replayable log of messages on some subjects (a JetStream stream). */
export interface EventLog {
  /** Publishes durably; resolves with the message's sequence in the log once stored. */
  append(subject: string, data: Payload): Promise<number>;
  /**
   * Every stored message on subjects matching `filter`, oldest first, then the live ones;
   * with `newOnly`, only those stored from now on (none missed across a reconnect).
   */
  replay(filter: string, handler: MessageHandler, options?: { newOnly?: boolean }): Promise<BusSubscription>;
  /** The stored messages on subjects matching `filter`, oldest first (none of the live ones after). */
  read(filter: string): Promise<BusMessage[]>;
  /** Deletes the stored messages on subjects matching `filter`. */
  purge(filter: string): Promise<void>;
}

export interface Bus {
  readonly transport: 'nats' | 'memory';
  publish(subject: string, data: Payload, options?: { headers?: Record<string, string>; reply?: string }): Promise<void>;
  /** `*` matches one token, `>` the rest (as in NATS). */
  subscribe(subject: string, handler: MessageHandler, options?: SubscribeOptions): Promise<BusSubscription>;
  /** Rejects with `TIMEOUT` or `NO_RESPONDERS`. */
  request(subject: string, data: Payload, options: { timeoutMs: number }): Promise<BusMessage>;
  /** Answers a request (publishes to its reply subject). */
  respond(message: BusMessage, data: Payload): Promise<void>;
  workQueue(name: string, options?: WorkQueueOptions): Promise<WorkQueue>;
  keyValue(bucket: string, options?: KeyValueOptions): Promise<KeyValueStore>;
  /**
   * The log named `name` (created when missing) holding `subjects`. With `maxAgeMs`,
   * messages older than that are dropped and an existing log is brought to it; without,
   * an existing log is left as it is (a reader's open).
   */
  eventLog(name: string, options: { subjects: string[]; maxAgeMs?: number; maxMessageBytes?: number }): Promise<EventLog>;
  /** Drains and closes; in-flight handlers finish first. */
  close(): Promise<void>;
}

export type BusErrorCode =
  | 'TIMEOUT'
  | 'NO_RESPONDERS'
  | 'KV_EXISTS'
  | 'KV_WRONG_REVISION'
  | 'NOT_JSON'
  | 'CLOSED'
  | 'CONNECTION'
  | 'INVALID_NAME';

export class BusError extends Error {
  override readonly name = 'BusError';
  constructor(
    readonly code: BusErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();
export const toBytes = (data: Payload): Uint8Array => (typeof data === 'string' ? encoder.encode(data) : data);
export const toText = (data: Uint8Array): string => decoder.decode(data);
export function parseJson<T>(data: Uint8Array, what: string): T {
  try {
    return JSON.parse(toText(data)) as T;
  } catch (e) {
    throw new BusError('NOT_JSON', `${what} is not JSON: ${(e as Error).message}`, { cause: e });
  }
}

/** A KV entry as every transport hands it out: the stored bytes, read as text or JSON on demand. */
export class StoredKvEntry implements KvEntry {
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
