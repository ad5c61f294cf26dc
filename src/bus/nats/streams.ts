import { DeliverPolicy, type JetStreamClient, type JetStreamManager, type StreamConfig, type StreamInfo } from '@nats-io/jetstream';
import { subjectsCollide } from '../natsRules.js';
import { isNotFound } from './errors.js';

/** A name as it may appear in a stream name. */
export const sanitize = (s: string) => s.replace(/[^A-Za-z0-9_-]/g, '_');

/**
 * Creates the stream if missing and reuses it if present (updating the given
 * fields when they differ). Two processes may race to create it: the loser looks it up.
 */
export async function ensureStream(
  jsm: JetStreamManager,
  config: Partial<StreamConfig> & { name: string },
  updatable: (keyof StreamConfig)[] = [],
): Promise<StreamInfo> {
  let info: StreamInfo;
  try {
    info = await jsm.streams.info(config.name);
  } catch (e) {
    if (!isNotFound(e)) throw e;
    try {
      return await jsm.streams.add(config);
    } catch (addError) {
      try {
        info = await jsm.streams.info(config.name);
      } catch {
        throw addError;
      }
    }
  }
  const changes = Object.fromEntries(updatable.filter((k) => info.config[k] !== config[k]).map((k) => [k, config[k]]));
  if (Object.keys(changes).length > 0) info = await jsm.streams.update(config.name, changes);
  return info;
}

/** Brings an existing stream to `limits`, updating only what differs (no update, no write, when all match). */
export async function updateStream(jsm: JetStreamManager, name: string, limits: Partial<StreamConfig>): Promise<StreamInfo> {
  const info = await jsm.streams.info(name);
  const config = info.config as unknown as Record<string, unknown>;
  const changes = Object.fromEntries(Object.entries(limits).filter(([k, v]) => config[k] !== v));
  return Object.keys(changes).length > 0 ? jsm.streams.update(name, changes) : info;
}

/** Streams (names) whose subjects overlap any of `subjects`. */
export async function overlapping(jsm: JetStreamManager, subjects: string[], except?: string): Promise<StreamInfo[]> {
  const found: StreamInfo[] = [];
  for await (const info of jsm.streams.list()) {
    if (info.config.name === except) continue;
    if ((info.config.subjects ?? []).some((p) => subjects.some((q) => subjectsCollide(p, q)))) found.push(info);
  }
  return found;
}

/**
 * The last stored message of each subject matching `filter` (a KV bucket's current
 * entries), mapped by `pick` (undefined: left out); counted first, so an empty read does
 * not wait for a fetch to expire.
 */
export async function readLastPerSubject<T>(
  js: JetStreamClient,
  jsm: JetStreamManager,
  stream: string,
  filter: string,
  pick: (subject: string, data: Uint8Array, seq: number, operation: string | undefined) => T | undefined,
): Promise<T[]> {
  const info = await jsm.streams.info(stream, { subjects_filter: filter });
  const subjects = Object.keys(info.state.subjects ?? {}).length;
  if (subjects === 0) return [];
  const consumer = await js.consumers.get(stream, { deliver_policy: DeliverPolicy.LastPerSubject, filter_subjects: filter });
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
