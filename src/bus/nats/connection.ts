import { readFile } from 'node:fs/promises';
import { batchFlushes } from './flushBatching.js';
import {
  connect,
  credsAuthenticator,
  nkeyAuthenticator,
  type Authenticator,
  type NatsConnection,
  type NodeConnectionOptions,
  type Status,
} from '@nats-io/transport-node';
import { jetstreamManager, type JetStreamManager } from '@nats-io/jetstream';
import { BusError } from '../Bus.js';

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

/**
 * Connects to NATS and checks that JetStream is on (connectNatsBus in NatsBus.ts builds the
 * bus on what this returns). With `waitOnFirstConnect` (the default) it waits until a server
 * answers; without it, a server that does not answer rejects with BusError `CONNECTION`.
 */
export async function openNatsConnection(options: NatsBusOptions): Promise<{ nc: NatsConnection; jsm: JetStreamManager }> {
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
  batchFlushes(nc);
  return { nc, jsm };
}

/** The client's connection events as the bus reports them; undefined for those it does not. */
export function toBusStatus(s: Status): NatsBusStatus | undefined {
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
