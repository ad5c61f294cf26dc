import { createHash, randomUUID, timingSafeEqual } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { z } from 'zod';
import { SentEventSchema } from '../contracts/waits.js';
import { EventRefusedError, type LiveWait } from '../flowWaits.js';
import type { Flows } from '../flows.js';
import type { Inbox } from '../inbox/Inbox.js';
import type { Journal, JournalEntry, JournalFollow } from '../journal/Journal.js';
import type { Logger } from '../log.js';
import {
  CorruptSnapshotError,
  FlowStatusSchema,
  isValidFlowId,
  type FlowSnapshotRecord,
  type FlowStatus,
  type SnapshotStore,
} from '../persistence/SnapshotStore.js';
import { SendError, sendEvent } from '../sendEvent.js';
import { StatechartCatalog } from './statechart.js';

export interface InspectorServerOptions {
  journal: Journal;
  store: SnapshotStore;
  flows: Flows;
  logger: Logger;
  /** Default 127.0.0.1: the journal holds prompts and answers, so it is not served to the network unless asked. */
  host?: string;
  /** Default 7420; 0 picks any free port (see `url`). */
  port?: number;
  /**
   * Where events sent to flows are kept: with it, a person answers a waiting flow from the
   * page (`POST /api/flows/:id/events`); without it the inspector only reads.
   */
  inbox?: Inbox;
  /** The flows this process runs (a daemon's): an answer is checked against their live waits rather than the last save. */
  running?: (flowId: string) => { record: FlowSnapshotRecord; waits: LiveWait[] } | undefined;
  /**
   * Asked of every API request (`Authorization: Bearer <token>`), read or write. Required
   * to listen beyond loopback: the page shows every prompt and answer, and answers flows.
   */
  token?: string;
}

export interface InspectorServer {
  /** `http://127.0.0.1:7420/`: where to point a browser. */
  url: string;
  /**
   * The address to open: the page, the flow to show, and the token in the fragment (a
   * browser never sends a fragment to a server; the page keeps it for the tab and sends it
   * as a header). Print it to the person; it does not go to the logs.
   */
  pageUrl(flowId?: string): string;
  /** Stops listening and ends the live streams. */
  close(): Promise<void>;
}

export const DEFAULT_INSPECTOR_PORT = 7420;

/**
 * The inspector's HTTP server (node:http, no framework): the page and its assets, and a
 * small JSON API over the snapshot store, the journal and the machines' statecharts.
 *
 * | route | answers |
 * |---|---|
 * | `GET /` | the page (works offline: every asset is served from here) |
 * | `GET /api/flows[?status=running,done][&limit=N]` | `{flows: FlowSummary[], total}`, newest first |
 * | `GET /api/flows/:id` | `{record, entries}`: the stored record (null when gone) and the journal |
 * | `GET /api/flows/:id/stream[?since=N]` | Server-Sent Events: each journal entry from the N-th on (`event: entry`, `id` its index) |
 * | `GET /api/flows/:id/waits` | `{flowId, status, waiting: FlowWait[]}`: what the flow waits for, as of its last save |
 * | `POST /api/flows/:id/events` | JSON `{type, data?, eventId?}`: sent to the flow (checked against what it waits for, kept in its inbox); 202 `{ok: true, flowId, eventId, duplicate?}` |
 * | `GET /api/machines` | `{machines: [id]}` |
 * | `GET /api/machines/:machineId` | the laid-out statechart (StatechartModel) |
 *
 * Errors are JSON `{error: {code, message}}` (`ok: false` beside it on a POST): 400
 * INVALID_FLOW_ID / INVALID_QUERY / BAD_JSON / INVALID_REQUEST / INVALID_EVENT, 401
 * UNAUTHORIZED, 403 FORBIDDEN_HOST / CROSS_SITE_REQUEST / JSON_REQUIRED, 404 FLOW_NOT_FOUND
 * / MACHINE_NOT_FOUND / NOT_FOUND, 405 METHOD_NOT_ALLOWED, 409 EVENT_NOT_ACCEPTED /
 * WAIT_EXPIRED / FLOW_FINISHED, 413 TOO_LARGE, 500 SNAPSHOT_CORRUPT / INTERNAL.
 *
 * A page that can answer flows is worth attacking from other sites, so:
 * - on a loopback address, only requests addressed to a loopback name are answered (DNS rebinding);
 * - a POST must be `Content-Type: application/json` (an HTML form cannot send that, and a
 *   script on another site cannot without a CORS preflight, which is never granted) and,
 *   when the browser says where it comes from (`Origin`, `Sec-Fetch-Site`), come from this
 *   inspector's own origin;
 * - with a token (required beyond loopback), every API request carries it:
 *   `Authorization: Bearer <token>`, or `?token=` on the stream (EventSource sends no headers).
 *   The page and its assets hold no data and are served without it.
 */
export async function startInspectorServer(options: InspectorServerOptions): Promise<InspectorServer> {
  const host = options.host ?? '127.0.0.1';
  const port = options.port ?? DEFAULT_INSPECTOR_PORT;
  const catalog = new StatechartCatalog(options.flows);
  const streams = new Set<{ end(): Promise<void> }>();
  const loopbackOnly = isLoopback(host);
  if (!loopbackOnly && !options.token) {
    throw new InspectorServerError(
      'INSPECTOR_TOKEN_REQUIRED',
      `the inspector would listen on ${host}, beyond this machine, where anyone who reaches it reads every prompt and answers waiting flows: set MICROTASK_INSPECTOR_TOKEN to a secret (e.g. \`openssl rand -hex 32\`), or MICROTASK_INSPECTOR_HOST=127.0.0.1`,
    );
  }
  const tokenDigest = options.token === undefined ? undefined : digest(options.token);

  const server = createServer((request, response) => {
    handle(request, response).catch((e: unknown) => {
      options.logger.error({ err: e, url: request.url }, 'inspector request failed');
      if (!response.headersSent) sendError(response, 500, 'INTERNAL', `the inspector could not answer: ${(e as Error).message}`);
      else response.destroy();
    });
  });

  async function handle(request: IncomingMessage, response: ServerResponse) {
    // A page on another site may resolve its own name to 127.0.0.1 (DNS rebinding): answer
    // only requests addressed to this machine by a loopback name.
    if (loopbackOnly && !isLoopbackHostHeader(request.headers.host)) {
      return sendError(response, 403, 'FORBIDDEN_HOST', `the inspector answers requests to localhost or 127.0.0.1 only, not to ${JSON.stringify(request.headers.host ?? '')}`);
    }
    const url = new URL(request.url ?? '/', 'http://inspector.invalid');
    const parts = url.pathname.split('/').filter(Boolean).map(decodeSegment);
    if (parts.some((part) => part === undefined)) return sendError(response, 400, 'INVALID_PATH', 'the path is not valid percent-encoding');
    const [first, second, third, fourth, ...rest] = parts as string[];
    const isEvents = first === 'api' && second === 'flows' && third !== undefined && fourth === 'events' && rest.length === 0;
    const reading = request.method === 'GET' || request.method === 'HEAD';

    if (isEvents && request.method !== 'POST') {
      response.setHeader('allow', 'POST');
      return sendError(response, 405, 'METHOD_NOT_ALLOWED', `send an event with POST ${url.pathname} and a JSON body {type, data}`);
    }
    if (!isEvents && !reading) {
      response.setHeader('allow', 'GET, HEAD');
      return sendError(response, 405, 'METHOD_NOT_ALLOWED', `${request.method} is not allowed here, use GET (events to a flow: POST /api/flows/<flowId>/events)`);
    }
    if (isEvents) {
      const refused = crossSite(request);
      if (refused) return sendError(response, 403, refused.code, refused.message, { ok: false });
    }
    if (first === 'api' && tokenDigest && !hasToken(request, url, reading)) {
      response.setHeader('www-authenticate', 'Bearer realm="microtask inspector"');
      return sendError(
        response,
        401,
        'UNAUTHORIZED',
        'this inspector asks for its token (MICROTASK_INSPECTOR_TOKEN): send Authorization: Bearer <token>, or open the address it printed (#token=…)',
        isEvents ? { ok: false } : {},
      );
    }

    if (parts.length === 0) return sendAsset(response, 'index.html');
    if (first === 'assets' && second !== undefined && third === undefined) return sendAsset(response, second);
    if (first !== 'api') return sendError(response, 404, 'NOT_FOUND', `no page at ${url.pathname}; the inspector is at /`);

    if (isEvents) return postEvent(request, response, third!);
    if (second === 'flows' && third === undefined) return listFlows(response, url);
    if (second === 'flows' && third !== undefined && fourth === undefined) return getFlow(response, third);
    if (second === 'flows' && third !== undefined && fourth === 'stream' && rest.length === 0) return streamFlow(request, response, third, url);
    if (second === 'flows' && third !== undefined && fourth === 'waits' && rest.length === 0) return getWaits(response, third);
    if (second === 'machines' && third === undefined) return sendJson(response, 200, { machines: catalog.ids() });
    if (second === 'machines' && third !== undefined && fourth === undefined) {
      const model = catalog.get(third);
      if (!model) return sendError(response, 404, 'MACHINE_NOT_FOUND', `no machine ${JSON.stringify(third)}; known: ${catalog.ids().join(', ')}`);
      return sendJson(response, 200, await model);
    }
    return sendError(response, 404, 'NOT_FOUND', `no API route ${url.pathname}`);
  }

  /** Whether the request carries the token: the header, or (reading only: EventSource sends no headers) `?token=`. */
  function hasToken(request: IncomingMessage, url: URL, reading: boolean): boolean {
    const header = request.headers.authorization;
    const bearer = typeof header === 'string' ? /^Bearer\s+(\S+)$/i.exec(header.trim())?.[1] : undefined;
    const given = bearer ?? (reading ? (url.searchParams.get('token') ?? undefined) : undefined);
    // Compared as digests: equal lengths, and no timing that tells how much of it matched.
    return given !== undefined && timingSafeEqual(digest(given), tokenDigest!);
  }

  /**
   * Why a write is refused as cross-site, if it is: not JSON (a form on any site can post
   * text/plain or urlencoded with no preflight), or from another origin by the browser's
   * own word. A client that is no browser sends neither header and is let through.
   */
  function crossSite(request: IncomingMessage): { code: string; message: string } | undefined {
    const type = (request.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase();
    if (type !== 'application/json') {
      return { code: 'JSON_REQUIRED', message: `send the event as JSON (Content-Type: application/json), not ${JSON.stringify(type || '(none)')}: a form posted from another site is refused` };
    }
    const site = request.headers['sec-fetch-site'];
    if (typeof site === 'string' && site !== 'same-origin') {
      return { code: 'CROSS_SITE_REQUEST', message: `refused: the request comes from another site (Sec-Fetch-Site: ${site}); answer flows from the inspector's own page` };
    }
    const origin = request.headers.origin;
    const own = `http://${request.headers.host ?? ''}`;
    if (origin !== undefined && origin.toLowerCase() !== own.toLowerCase()) {
      return { code: 'CROSS_SITE_REQUEST', message: `refused: the request comes from ${JSON.stringify(origin)}, not from the inspector's own page (${own})` };
    }
    return undefined;
  }

  async function postEvent(request: IncomingMessage, response: ServerResponse, flowId: string) {
    const fail = (status: number, code: string, message: string) => sendError(response, status, code, message, { ok: false });
    if (!isValidFlowId(flowId)) return fail(400, 'INVALID_FLOW_ID', `${JSON.stringify(flowId)} is not a flow id (1-200 letters, digits, "_" and "-")`);
    if (!options.inbox) return fail(405, 'METHOD_NOT_ALLOWED', 'this inspector only reads: it was started without the inbox events go to; use `microtask send`');
    const text = await readBody(request, MAX_EVENT_BYTES);
    if (text === undefined) return fail(413, 'TOO_LARGE', `the event is larger than ${MAX_EVENT_BYTES / 1024} KiB`);
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch {
      return fail(400, 'BAD_JSON', 'the body is not JSON: send {"type": "<event>", "data": {...}}');
    }
    const parsed = EventRequestSchema.safeParse(json);
    if (!parsed.success) return fail(400, 'INVALID_REQUEST', `the body is not {type, data?, eventId?}: ${parsed.error.issues.map((i) => `${i.path.join('.') || '(body)'}: ${i.message}`).join('; ')}`);
    const { type, data } = parsed.data;
    const eventId = parsed.data.eventId ?? randomUUID();
    try {
      const kept = await sendEvent(
        { store: options.store, inbox: options.inbox, flows: options.flows, ...(options.running ? { running: options.running } : {}) },
        flowId,
        { eventId, type, ...(data !== undefined ? { data } : {}), sentAt: Date.now() },
      );
      if (!kept.duplicate) options.logger.info({ flowId, eventId, type }, 'event sent from the inspector, kept for the flow');
      return sendJson(response, kept.duplicate ? 200 : 202, { ok: true, flowId, eventId, ...(kept.duplicate ? { duplicate: true } : {}) });
    } catch (e) {
      if (e instanceof EventRefusedError || e instanceof SendError) return fail(REFUSAL_STATUS[e.code], e.code, e.message);
      if (e instanceof CorruptSnapshotError) return fail(500, e.code, e.message);
      throw e;
    }
  }

  async function getWaits(response: ServerResponse, flowId: string) {
    if (!isValidFlowId(flowId)) return sendError(response, 400, 'INVALID_FLOW_ID', `${JSON.stringify(flowId)} is not a flow id (1-200 letters, digits, "_" and "-")`);
    const here = options.running?.(flowId);
    const record = here?.record ?? (await options.store.load(flowId))?.record;
    if (!record) return sendError(response, 404, 'FLOW_NOT_FOUND', `no flow ${flowId} in the snapshot store`);
    const waiting = record.status === 'running' ? (record.waiting ?? []) : [];
    return sendJson(response, 200, { flowId, status: record.status, waiting });
  }

  async function listFlows(response: ServerResponse, url: URL) {
    const statusParam = url.searchParams.get('status');
    let status: FlowStatus[] | undefined;
    if (statusParam) {
      status = [];
      for (const s of statusParam.split(',')) {
        const parsed = FlowStatusSchema.safeParse(s.trim());
        if (!parsed.success) {
          return sendError(response, 400, 'INVALID_QUERY', `status ${JSON.stringify(s)} is not one of ${FlowStatusSchema.options.join(', ')}`);
        }
        status.push(parsed.data);
      }
    }
    const limitText = url.searchParams.get('limit');
    const limit = limitText === null ? Infinity : Number(limitText);
    if (limitText !== null && (!Number.isInteger(limit) || limit < 1)) {
      return sendError(response, 400, 'INVALID_QUERY', `limit must be a whole number of flows, at least 1, not ${JSON.stringify(limitText)}`);
    }
    const flows = await options.store.list(status ? { status } : {});
    flows.reverse();
    return sendJson(response, 200, { flows: flows.slice(0, limit), total: flows.length });
  }

  async function getFlow(response: ServerResponse, flowId: string) {
    if (!isValidFlowId(flowId)) return sendError(response, 400, 'INVALID_FLOW_ID', `${JSON.stringify(flowId)} is not a flow id (1-200 letters, digits, "_" and "-")`);
    let record: FlowSnapshotRecord | null = null;
    let recordError: { code: string; message: string } | undefined;
    try {
      record = (await options.store.load(flowId))?.record ?? null;
    } catch (e) {
      if (!(e instanceof CorruptSnapshotError)) throw e;
      recordError = { code: e.code, message: e.message };
    }
    const entries = await options.journal.read(flowId);
    if (!record && entries.length === 0) {
      if (recordError) return sendError(response, 500, recordError.code, recordError.message);
      return sendError(response, 404, 'FLOW_NOT_FOUND', `no flow ${flowId}: not in the snapshot store and no journal (it may have been pruned)`);
    }
    return sendJson(response, 200, { flowId, record, entries, ...(recordError ? { recordError } : {}) });
  }

  async function streamFlow(request: IncomingMessage, response: ServerResponse, flowId: string, url: URL) {
    if (!isValidFlowId(flowId)) return sendError(response, 400, 'INVALID_FLOW_ID', `${JSON.stringify(flowId)} is not a flow id (1-200 letters, digits, "_" and "-")`);
    // A reconnecting EventSource says the last entry it had; a first connection may say
    // how many entries it already read (from GET /api/flows/:id).
    const lastEventId = request.headers['last-event-id'];
    const sinceText = typeof lastEventId === 'string' && lastEventId !== '' ? String(Number(lastEventId) + 1) : url.searchParams.get('since') ?? '0';
    const since = Number(sinceText);
    if (!Number.isInteger(since) || since < 0) return sendError(response, 400, 'INVALID_QUERY', `since must be a whole number of entries, not ${JSON.stringify(sinceText)}`);

    response.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-store',
      connection: 'keep-alive',
      'x-content-type-options': 'nosniff',
    });
    response.write(': microtask inspector\nretry: 1000\n\n');
    let index = 0;
    let follow: JournalFollow | undefined;
    let ended = false;
    const heartbeat = setInterval(() => response.write(': ping\n\n'), 15_000);
    heartbeat.unref();
    const stream = {
      end: async () => {
        if (ended) return;
        ended = true;
        clearInterval(heartbeat);
        await follow?.stop();
        response.end();
      },
    };
    streams.add(stream);
    response.on('close', () => {
      streams.delete(stream);
      void stream.end();
    });
    follow = await options.journal.follow(flowId, (entry: JournalEntry) => {
      const id = index++;
      if (id < since || ended) return;
      response.write(`id: ${id}\nevent: entry\ndata: ${JSON.stringify(entry)}\n\n`);
    });
    // Closed while the journal was being read: stop following at once.
    if (ended) await follow.stop();
  }

  const pageDir = new URL('./page/', import.meta.url);
  const assets = new Map<string, { type: string; body: Buffer }>();
  async function sendAsset(response: ServerResponse, name: string) {
    const type = ASSET_TYPES.get(name);
    if (!type) return sendError(response, 404, 'NOT_FOUND', `no asset ${JSON.stringify(name)}`);
    let asset = assets.get(name);
    if (!asset) {
      asset = { type, body: await readFile(new URL(name, pageDir)) };
      assets.set(name, asset);
    }
    response.writeHead(200, {
      'content-type': asset.type,
      'content-length': asset.body.length,
      'cache-control': 'no-cache',
      'x-content-type-options': 'nosniff',
      // Everything comes from here: no CDN, no inline script, nothing sent elsewhere.
      'content-security-policy': "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'",
    });
    response.end(asset.body);
  }

  await new Promise<void>((resolve, reject) => {
    const onError = (e: NodeJS.ErrnoException) => {
      reject(
        e.code === 'EADDRINUSE'
          ? new InspectorServerError('INSPECTOR_PORT_IN_USE', `cannot serve the inspector on ${host}:${port}: the port is in use. Choose another port (0 picks any free one).`, { cause: e })
          : new InspectorServerError('INSPECTOR_LISTEN', `cannot serve the inspector on ${host}:${port}: ${e.message}`, { cause: e }),
      );
    };
    server.once('error', onError);
    server.listen(port, host, () => {
      server.off('error', onError);
      resolve();
    });
  });
  server.on('error', (e) => options.logger.error({ err: e }, 'inspector server error'));
  const address = server.address() as AddressInfo;
  // Listening on every address (in a container): a browser on this machine reaches it at 127.0.0.1.
  const unspecified = address.address === '0.0.0.0' || address.address === '::';
  const shownHost = unspecified ? '127.0.0.1' : address.family === 'IPv6' ? `[${address.address}]` : address.address;
  const url = `http://${shownHost}:${address.port}/`;
  options.logger.info({ url }, `inspector at ${url}${options.token ? ' (it asks for MICROTASK_INSPECTOR_TOKEN: open it with #token=<the token>)' : ''}`);

  return {
    url,
    pageUrl: (flowId) => {
      const fragment = new URLSearchParams({ ...(options.token ? { token: options.token } : {}), ...(flowId ? { flow: flowId } : {}) }).toString();
      return fragment ? `${url}#${fragment}` : url;
    },
    close: async () => {
      await Promise.all([...streams].map((stream) => stream.end()));
      streams.clear();
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
    },
  };
}

export class InspectorServerError extends Error {
  override readonly name = 'InspectorServerError';
  constructor(
    readonly code: 'INSPECTOR_PORT_IN_USE' | 'INSPECTOR_LISTEN' | 'INSPECTOR_TOKEN_REQUIRED',
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/**
 * The page's files: only these are served, by name (no path from the URL reaches the disk).
 * A Map, not an object literal: `constructor` or `__proto__` must not find Object.prototype's.
 */
const ASSET_TYPES = new Map<string, string>([
  ['index.html', 'text/html; charset=utf-8'],
  ['app.js', 'text/javascript; charset=utf-8'],
  ['statechart.js', 'text/javascript; charset=utf-8'],
  ['actorLabel.js', 'text/javascript; charset=utf-8'],
  ['waits.js', 'text/javascript; charset=utf-8'],
  ['style.css', 'text/css; charset=utf-8'],
  ['favicon.svg', 'image/svg+xml'],
]);

function sendJson(response: ServerResponse, status: number, body: unknown) {
  const text = JSON.stringify(body);
  response.writeHead(status, {
    'content-type': 'application/json; charset=utf-8',
    'content-length': Buffer.byteLength(text),
    'cache-control': 'no-store',
    'x-content-type-options': 'nosniff',
  });
  response.end(text);
}

function sendError(response: ServerResponse, status: number, code: string, message: string, extra: Record<string, unknown> = {}) {
  sendJson(response, status, { ...extra, error: { code, message } });
}

/** An event sent from the page; the id is made here when the page gives none. */
const EventRequestSchema = z.object({ type: SentEventSchema.shape.type, data: z.unknown().optional(), eventId: SentEventSchema.shape.eventId.optional() });

/** A person's answer is a few lines of feedback: far below this. */
const MAX_EVENT_BYTES = 64 * 1024;

/** Why an event was not kept, as an HTTP status. */
const REFUSAL_STATUS: Record<EventRefusedError['code'] | SendError['code'], number> = {
  INVALID_EVENT: 400,
  FLOW_NOT_FOUND: 404,
  EVENT_NOT_ACCEPTED: 409,
  WAIT_EXPIRED: 409,
  STALE_EVENT: 409,
  FLOW_FINISHED: 409,
};

/** The request's body as text; undefined once it passes `limit` bytes (the rest is not read). */
async function readBody(request: IncomingMessage, limit: number): Promise<string | undefined> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of request as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > limit) return undefined;
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

const digest = (text: string) => createHash('sha256').update(text).digest();

function decodeSegment(segment: string): string | undefined {
  try {
    return decodeURIComponent(segment);
  } catch {
    return undefined;
  }
}

function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^127\.\d+\.\d+\.\d+$/.test(host);
}

function isLoopbackHostHeader(header: string | undefined): boolean {
  if (!header) return false;
  const name = header.startsWith('[') ? header.slice(0, header.indexOf(']') + 1) : header.replace(/:\d+$/, '');
  return name === 'localhost' || name === '[::1]' || /^127\.\d+\.\d+\.\d+$/.test(name);
}
