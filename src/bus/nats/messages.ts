import { headers as natsHeaders, type MsgHdrs } from '@nats-io/transport-node';
import { parseJson, toText, type BusMessage } from '../Bus.js';

/** A core or stored NATS message as the Bus contract hands it out. */
export class NatsMessage implements BusMessage {
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

export function headersToRecord(hdrs: MsgHdrs): Record<string, string> {
  const record: Record<string, string> = {};
  for (const [key, values] of hdrs) if (values[0] !== undefined) record[key] = values[0];
  return record;
}

export function toNatsHeaders(record: Record<string, string>): MsgHdrs {
  const h = natsHeaders();
  for (const [k, v] of Object.entries(record)) h.set(k, v);
  return h;
}

