import { readFile } from 'node:fs/promises';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Flows } from '../flows.js';
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
}

export interface InspectorServer {
  /** `http://127.0.0.1:7420/`: where to point a browser. */
  url: string;
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
 * | `GET /api/machines` | `{machines: [id]}` |
 * | `GET /api/machines/:machineId` | the laid-out statechart (StatechartModel) |
 *
 * Errors are JSON `{error: {code, message}}`: 400 INVALID_FLOW_ID / INVALID_QUERY, 403
 * FORBIDDEN_HOST, 404 FLOW_NOT_FOUND / MACHINE_NOT_FOUND / NOT_FOUND, 405
 * METHOD_NOT_ALLOWED, 500 SNAPSHOT_CORRUPT / INTERNAL.
 */
export async function startInspectorServer(options: InspectorServerOptions): Promise<InspectorServer> {
  const host = options.host ?? '127.0.0.1';
  const port = options.port ?? DEFAULT_INSPECTOR_PORT;
  const catalog = new StatechartCatalog(options.flows);
  const streams = new Set<{ end(): Promise<void> }>();
  const loopbackOnly = isLoopback(host);

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
    if (request.method !== 'GET' && request.method !== 'HEAD') {
      response.setHeader('allow', 'GET, HEAD');
      return sendError(response, 405, 'METHOD_NOT_ALLOWED', `the inspector is read-only: ${request.method} is not allowed, use GET`);
    }
    const url = new URL(request.url ?? '/', 'http://inspector.invalid');
    const parts = url.pathname.split('/').filter(Boolean).map(decodeSegment);
    if (parts.some((part) => part === undefined)) return sendError(response, 400, 'INVALID_PATH', 'the path is not valid percent-encoding');
    const [first, second, third, fourth, ...rest] = parts as string[];

    if (parts.length === 0) return sendAsset(response, 'index.html');
    if (first === 'assets' && second !== undefined && third === undefined) return sendAsset(response, second);
    if (first !== 'api') return sendError(response, 404, 'NOT_FOUND', `no page at ${url.pathname}; the inspector is at /`);

    if (second === 'flows' && third === undefined) return listFlows(response, url);
    if (second === 'flows' && third !== undefined && fourth === undefined) return getFlow(response, third);
    if (second === 'flows' && third !== undefined && fourth === 'stream' && rest.length === 0) return streamFlow(request, response, third, url);
    if (second === 'machines' && third === undefined) return sendJson(response, 200, { machines: catalog.ids() });
    if (second === 'machines' && third !== undefined && fourth === undefined) {
      const model = catalog.get(third);
      if (!model) return sendError(response, 404, 'MACHINE_NOT_FOUND', `no machine ${JSON.stringify(third)}; known: ${catalog.ids().join(', ')}`);
      return sendJson(response, 200, await model);
    }
    return sendError(response, 404, 'NOT_FOUND', `no API route ${url.pathname}`);
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
  options.logger.info({ url }, `inspector at ${url}`);

  return {
    url,
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
    readonly code: 'INSPECTOR_PORT_IN_USE' | 'INSPECTOR_LISTEN',
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

function sendError(response: ServerResponse, status: number, code: string, message: string) {
  sendJson(response, status, { error: { code, message } });
}

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
