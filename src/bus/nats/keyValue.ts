import { nanos } from '@nats-io/transport-node';
import { JetStreamApiError, type StreamConfig } from '@nats-io/jetstream';
import { KvWatchInclude, type KV } from '@nats-io/kv';
import { BusError, StoredKvEntry, type BusSubscription, type KeyValueOptions, type KeyValueStore, type KvEntry, type Payload } from '../Bus.js';
import { assertKvKey, assertName } from '../natsRules.js';
import type { NatsBusCore } from './core.js';
import { WRONG_LAST_SEQUENCE } from './errors.js';
import { pause } from './pause.js';
import { readLastPerSubject, updateStream } from './streams.js';

/** NatsBus.keyValue: the bucket opened (made if missing), brought to its limits when given. */
export async function openKeyValue(bus: NatsBusCore, bucket: string, options: KeyValueOptions = {}): Promise<KeyValueStore> {
  bus.assertOpen();
  assertName('KV bucket', bucket);
  const name = `${bus.streamPrefix}_${bucket}`;
  let kv: KV;
  try {
    // An existing bucket is opened as it is (create does not change it): its limits are set below.
    kv = await bus.kvm.create(name, { history: 1, replicas: bus.replicas, ...(options.maxAgeMs ? { ttl: options.maxAgeMs } : {}) });
  } catch (e) {
    // Another process may have created it between our look-up and our create.
    try {
      kv = await bus.kvm.open(name);
      await kv.status();
    } catch {
      throw bus.mapError(e, `open KV bucket ${bucket}`);
    }
  }
  if (options.maxAgeMs !== undefined) {
    // Made by an earlier version (kept forever) or with other limits: brought to these.
    const limits: Partial<StreamConfig> = { max_age: nanos(options.maxAgeMs), max_msgs_per_subject: 1, num_replicas: bus.replicas };
    try {
      await updateStream(bus.jsm, `KV_${name}`, limits);
    } catch (e) {
      throw bus.mapError(e, `set the limits of KV bucket ${bucket}`);
    }
  }
  return new NatsKeyValue(bus, kv);
}

class NatsKeyValue implements KeyValueStore {
  constructor(
    private readonly bus: NatsBusCore,
    private readonly kv: KV,
  ) {}

  async get(key: string): Promise<KvEntry | undefined> {
    this.bus.assertOpen();
    assertKvKey(key);
    try {
      const e = await this.kv.get(key);
      return e && e.operation === 'PUT' ? new StoredKvEntry(e.key, e.value, e.revision) : undefined;
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
      return await readLastPerSubject(this.bus.js, this.bus.jsm, stream, `${prefix}.${filter}`, (subject, data, seq, operation) =>
        operation === 'DEL' || operation === 'PURGE' ? undefined : new StoredKvEntry(subject.slice(prefix.length + 1), data, seq),
      );
    } catch (e) {
      throw this.bus.mapError(e, `read the entries ${filter}`);
    }
  }

  async keys(filter = '>'): Promise<string[]> {
    this.bus.assertOpen();
    this.bus.assertSubject(filter, true);
    // As `entries` reads them, not nats.js's kv.keys(): under load that one's listing never
    // ended now and then (a lease check of the daemon waited forever on it: test/leaseLapse
    // with the machine busy). This one fetches in bounded batches until nothing is pending.
    const { stream, prefix } = this.kv as unknown as { stream: string; prefix: string };
    try {
      return await readLastPerSubject(this.bus.js, this.bus.jsm, stream, `${prefix}.${filter}`, (subject, _data, _seq, operation) =>
        operation === 'DEL' || operation === 'PURGE' ? undefined : subject.slice(prefix.length + 1),
      );
    } catch (e) {
      throw this.bus.mapError(e, `list keys ${filter}`);
    }
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
          handler(e.operation === 'PUT' ? new StoredKvEntry(e.key, e.value, e.revision) : undefined);
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
                handler(e.key, e.operation === 'PUT' ? new StoredKvEntry(e.key, e.value, e.revision) : undefined);
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
