import { createHash } from 'node:crypto';
import { BusError, type KeyValueStore } from '../bus/Bus.js';
import { ProtocolError } from './protocol.js';

/**
 * Request ids claimed atomically: of two claims of one key, one wins and both learn the
 * holder. Keys and holders are opaque strings to the store (see `claimRequest`).
 */
export interface RequestIds {
  /** Resolves with the holder of `key` now: `holder` when this call claimed it. */
  claim(key: string, holder: string): Promise<string>;
  /** Releases the claim if `holder` holds it (the flow did not start; a retry must start one). */
  release(key: string, holder: string): Promise<void>;
}

const sha256 = (text: string) => createHash('sha256').update(text).digest('hex');

/** JSON with every object's keys sorted: the same value always gives the same text. */
function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map((item) => (item === undefined ? 'null' : canonicalJson(item))).join(',')}]`;
  if (value !== null && typeof value === 'object') {
    const entries = Object.entries(value as Record<string, unknown>)
      .filter(([, v]) => v !== undefined)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(',')}}`;
  }
  return JSON.stringify(value) ?? 'null';
}

/** What a request asked for: its pattern and validated input, whatever the order of their keys. */
export const requestFingerprint = (pattern: string, input: unknown) => `sha256:${sha256(canonicalJson({ pattern, input }))}`;

// A holder is the flow and the fingerprint of the request that started it, kept together
// in the one value each store claims atomically (the flow id has no space in it).
const holderOf = (flowId: string, fingerprint: string) => `${flowId} ${fingerprint}`;
function parseHolder(holder: string): { flowId: string; fingerprint?: string } {
  const space = holder.indexOf(' ');
  // A bare flow id: claimed before fingerprints were kept, so its input is unknown.
  return space < 0 ? { flowId: holder } : { flowId: holder.slice(0, space), fingerprint: holder.slice(space + 1) };
}

/**
 * Claims `requestId` of `pattern` for `flowId`. Resolves with `flowId` when this call
 * claimed it, with the earlier flow when the same request (same pattern, same input) came
 * before; rejects with REQUEST_ID_CONFLICT when the id was used for another input. Ids
 * are scoped per pattern: the same id sent to two patterns names two requests.
 */
export async function claimRequest(
  ids: RequestIds,
  claim: { pattern: string; requestId: string; flowId: string; input: unknown },
): Promise<{ flowId: string; release: () => Promise<void> }> {
  const key = `${claim.pattern}/${claim.requestId}`;
  const fingerprint = requestFingerprint(claim.pattern, claim.input);
  const mine = holderOf(claim.flowId, fingerprint);
  const holder = parseHolder(await ids.claim(key, mine));
  if (holder.fingerprint !== undefined && holder.fingerprint !== fingerprint) {
    throw new ProtocolError(
      'REQUEST_ID_CONFLICT',
      `request id ${JSON.stringify(claim.requestId)} already started flow ${holder.flowId} with another ${claim.pattern} input: send a new request id for a new request`,
    );
  }
  return { flowId: holder.flowId, release: () => ids.release(key, mine) };
}

/** Request ids in a KV bucket (NATS: the flows bucket, shared by every daemon on it). */
export class KvRequestIds implements RequestIds {
  constructor(private readonly kv: KeyValueStore) {}

  // Hashed: a request id may hold characters a KV key may not.
  private entryKey = (key: string) => `request.${sha256(key).slice(0, 40)}`;

  async claim(key: string, holder: string): Promise<string> {
    const entryKey = this.entryKey(key);
    for (;;) {
      try {
        await this.kv.create(entryKey, holder);
        return holder;
      } catch (e) {
        if (!(e instanceof BusError && e.code === 'KV_EXISTS')) throw e;
      }
      const existing = await this.kv.get(entryKey);
      // Released between our attempt and this read (the holder's flow did not start): try again.
      if (existing) return existing.string();
    }
  }

  async release(key: string, holder: string): Promise<void> {
    const entryKey = this.entryKey(key);
    const existing = await this.kv.get(entryKey);
    if (existing?.string() === holder) await this.kv.delete(entryKey);
  }
}
