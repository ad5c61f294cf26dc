import { nanos } from '@nats-io/transport-node';
import { DeliverPolicy, JetStreamApiError, RetentionPolicy, StorageType, type ConsumerMessages, type StreamConfig } from '@nats-io/jetstream';
import { BusError, toBytes, type BusMessage, type BusSubscription, type EventLog, type MessageHandler } from '../Bus.js';
import { assertName, subjectCovers, subjectMatches } from '../natsRules.js';
import type { NatsBusCore } from './core.js';
import { SUBJECTS_OVERLAP } from './errors.js';
import { NatsMessage } from './messages.js';
import { ensureStream, overlapping } from './streams.js';

/** NatsBus.eventLog: an event log on the stream that holds its subjects (see openLogStream). */
export async function openEventLog(
  bus: NatsBusCore,
  name: string,
  options: { subjects: string[]; maxAgeMs?: number; maxMessageBytes?: number },
): Promise<EventLog> {
  bus.assertOpen();
  assertName('event log', name);
  if (options.subjects.length === 0) throw new BusError('INVALID_NAME', `event log "${name}" needs at least one subject`);
  for (const s of options.subjects) bus.assertSubject(s, true);
  let stream: string;
  try {
    stream = await openLogStream(bus, name, options.subjects, options.maxAgeMs, options.maxMessageBytes);
  } catch (e) {
    throw bus.mapError(e, `set up event log ${name}`);
  }
  return {
    append: async (subject, data) => {
      bus.assertOpen();
      bus.assertSubject(subject, false);
      if (!options.subjects.some((p) => subjectMatches(p, subject))) {
        throw new BusError('INVALID_NAME', `subject ${subject} is not one of event log "${name}"'s subjects (${options.subjects.join(', ')})`);
      }
      try {
        return (await bus.js.publish(subject, toBytes(data))).seq;
      } catch (e) {
        throw bus.mapError(e, `append to event log ${name}`);
      }
    },
    replay: async (filter, handler, replayOptions) => {
      bus.assertOpen();
      bus.assertSubject(filter, true);
      return replay(bus, stream, filter, handler, replayOptions?.newOnly === true);
    },
    read: async (filter) => {
      bus.assertOpen();
      bus.assertSubject(filter, true);
      return readStored(bus, stream, filter);
    },
    purge: async (filter) => {
      bus.assertOpen();
      bus.assertSubject(filter, true);
      try {
        await bus.jsm.streams.purge(stream, { filter });
      } catch (e) {
        throw bus.mapError(e, `purge ${filter} from ${stream}`);
      }
    },
  };
}

/**
 * The log's stream: its own (`<PREFIX>_LOG_<name>`) when it exists or nothing else
 * holds its subjects; the one stream that already holds all of them otherwise (a
 * dead-letter stream, say). JetStream never lets two streams share a subject.
 */
async function openLogStream(bus: NatsBusCore, name: string, subjects: string[], maxAgeMs: number | undefined, maxMessageBytes?: number): Promise<string> {
  const own = `${bus.streamPrefix}_LOG_${name}`;
  const config: Partial<StreamConfig> & { name: string } = {
    name: own,
    subjects,
    retention: RetentionPolicy.Limits,
    storage: StorageType.File,
    max_age: maxAgeMs ? nanos(maxAgeMs) : 0,
    num_replicas: bus.replicas,
    ...(maxMessageBytes ? { max_msg_size: maxMessageBytes } : {}),
  };
  const others = await overlapping(bus.jsm, subjects, own);
  if (others.length === 0) {
    try {
      // Opened without a max age (a client reading the log): the one its owner set stays.
      const info = await ensureStream(bus.jsm, config, maxAgeMs === undefined ? [] : ['max_age', 'num_replicas', ...(maxMessageBytes ? (['max_msg_size'] as const) : [])]);
      const missing = subjects.filter((s) => !info.config.subjects.includes(s));
      if (missing.length > 0) await bus.jsm.streams.update(own, { subjects: [...info.config.subjects, ...missing] });
      return own;
    } catch (e) {
      if (!(e instanceof JetStreamApiError && e.code === SUBJECTS_OVERLAP)) throw e;
      // Someone else created a stream holding these subjects meanwhile: look again.
    }
  }
  const holders = others.length > 0 ? others : await overlapping(bus.jsm, subjects, own);
  const holder = holders.length === 1 ? holders[0]! : undefined;
  if (holder && subjects.every((q) => holder.config.subjects.some((p) => subjectCovers(p, q)))) return holder.config.name;
  throw new BusError(
    'INVALID_NAME',
    `event log "${name}" subjects (${subjects.join(', ')}) overlap with ${holders
      .map((s) => `${s.config.name} (${s.config.subjects.join(', ')})`)
      .join(', ')}`,
  );
}

/** The stored messages matching `filter`: counted first, so an empty read does not wait for a fetch to expire. */
async function readStored(bus: NatsBusCore, stream: string, filter: string): Promise<BusMessage[]> {
  try {
    const info = await bus.jsm.streams.info(stream, { subjects_filter: filter });
    const stored = Object.values(info.state.subjects ?? {}).reduce((a, b) => a + b, 0);
    if (stored === 0) return [];
    const consumer = await bus.js.consumers.get(stream, {
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
    throw bus.mapError(e, `read ${filter} from ${stream}`);
  }
}

/** An ordered consumer from the first message: stored ones, then live ones, one handler call at a time. */
async function replay(bus: NatsBusCore, stream: string, filter: string, handler: MessageHandler, newOnly = false): Promise<BusSubscription> {
  let messages: ConsumerMessages;
  try {
    const consumer = await bus.js.consumers.get(stream, {
      deliver_policy: newOnly ? DeliverPolicy.New : DeliverPolicy.All,
      ...(filter === '>' ? {} : { filter_subjects: filter }),
    });
    messages = await consumer.consume();
  } catch (e) {
    throw bus.mapError(e, `replay ${filter} from ${stream}`);
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
  const unregister = bus.register({ stop });
  return { unsubscribe: stop };
}
