import { createServer, type Server } from 'node:http';
import { WebSocket, WebSocketServer } from 'ws';
import type { AddressInfo } from 'node:net';
import { createWebSocketInspector } from '@statelyai/inspect';
import type { InspectionEvent } from 'xstate';
import type { Logger } from '../log.js';

export interface StatelyInspectorOptions {
  logger: Logger;
  /**
   * The port of the local bridge: a page that embeds Stately's inspector, and the WebSocket
   * the flows' inspection events go through. Default 7421 (next to our own inspector's
   * 7420); 0 picks a free one (see `url`).
   */
  port?: number;
  /** Default 127.0.0.1. */
  host?: string;
  /** Stately's inspector UI, embedded by the bridge page (default https://stately.ai/inspect). */
  inspectorUrl?: string;
}

export interface StatelyInspector {
  /** The bridge page to open in a browser (it embeds Stately's hosted inspector). */
  url: string;
  /** Pass as FlowHost's `inspect` option: every inspection event of every flow goes to Stately's inspector. */
  inspect: (event: InspectionEvent) => void;
  /** Disconnects, closes the bridge and any browser connected to it (the process can exit). */
  stop(): void;
}

export const DEFAULT_STATELY_PORT = 7421;

/** Events kept for a page opened late (as @statelyai/inspect's own server does). */
const REPLAY = 200;

/**
 * Connects flows to Stately's visual inspector (@statelyai/inspect, the XState v5
 * successor of @xstate/inspect). Its UI is hosted online (https://stately.ai/inspect), so
 * the Node side is a bridge: `createWebSocketInspector` (@statelyai/inspect's Node
 * inspector) sends every inspection event to a WebSocket here, and the page served here
 * embeds Stately's UI and hands it what arrives, by postMessage. A person opens `url`;
 * events sent before the page was open (the last 200) are replayed to it.
 *
 * The bridge is @statelyai/inspect's `createInspectorServer` done again, because that one
 * cannot be used in a daemon: a taken port throws from an event listener (the process
 * dies), it cannot say which port it got, and its `stop` leaves an open browser tab
 * connected, which keeps the process from exiting after SIGTERM.
 *
 * Our own inspector (server.ts) needs no internet; this one does, in the browser only.
 */
export async function startStatelyInspector(options: StatelyInspectorOptions): Promise<StatelyInspector> {
  const host = options.host ?? '127.0.0.1';
  const inspectorUrl = options.inspectorUrl ?? 'https://stately.ai/inspect';

  const page = bridgePage(inspectorUrl);
  const server = createServer((_request, response) => {
    response.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
    response.end(page);
  });
  const sockets = new WebSocketServer({ server });
  const recent: string[] = [];
  sockets.on('connection', (socket) => {
    for (const message of recent) socket.send(message);
    socket.on('message', (data) => {
      const message = data.toString();
      recent.push(message);
      if (recent.length > REPLAY) recent.shift();
      for (const client of sockets.clients) if (client !== socket && client.readyState === WebSocket.OPEN) client.send(message);
    });
    socket.on('error', (e) => options.logger.debug({ err: e }, 'Stately inspector: a connection failed'));
  });
  sockets.on('error', (e) => options.logger.warn({ err: e }, 'Stately inspector bridge error'));

  const port = await listen(server, options.port ?? DEFAULT_STATELY_PORT, host);
  const inspector = createWebSocketInspector({ url: `ws://${hostForUrl(host)}:${port}` });
  const url = `http://${hostForUrl(host)}:${port}/`;
  options.logger.info({ url }, `Stately inspector: open ${url} in a browser (it loads Stately's inspector UI from ${new URL(inspectorUrl).origin}, so it needs internet access)`);

  let stopped = false;
  return {
    url,
    inspect: (event) => {
      if (!stopped) inspector.inspect.next?.(event);
    },
    stop: () => {
      if (stopped) return;
      stopped = true;
      inspector.stop();
      for (const client of sockets.clients) client.terminate();
      sockets.close();
      server.close();
      server.closeAllConnections();
    },
  };
}

export class StatelyInspectorError extends Error {
  override readonly name = 'StatelyInspectorError';
  constructor(
    readonly code: 'STATELY_PORT_IN_USE' | 'STATELY_LISTEN',
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

async function listen(server: Server, port: number, host: string): Promise<number> {
  await new Promise<void>((resolve, reject) => {
    const onError = (e: NodeJS.ErrnoException) =>
      reject(
        e.code === 'EADDRINUSE'
          ? new StatelyInspectorError('STATELY_PORT_IN_USE', `cannot start the bridge to Stately's inspector on ${host}:${port}: the port is in use. Choose another port (0 picks a free one).`, { cause: e })
          : new StatelyInspectorError('STATELY_LISTEN', `cannot start the bridge to Stately's inspector on ${host}:${port}: ${e.message}`, { cause: e }),
      );
    server.once('error', onError);
    server.listen(port, host, () => {
      server.off('error', onError);
      resolve();
    });
  });
  return (server.address() as AddressInfo).port;
}

const hostForUrl = (host: string) => (host.includes(':') ? `[${host}]` : host);

/**
 * The page that embeds Stately's inspector: what it receives on the WebSocket it posts to
 * the embedded inspector once that says it is connected (as @statelyai/inspect's server page).
 */
function bridgePage(inspectorUrl: string): string {
  return `<!doctype html>
<html>
<head>
  <meta charset="utf-8">
  <title>Stately inspector: microtask flows</title>
  <style>* { margin: 0; padding: 0; } html, body { height: 100%; } iframe { width: 100%; height: 100%; border: none; }</style>
</head>
<body>
  <iframe id="inspector" src="${escapeAttribute(inspectorUrl)}"></iframe>
  <script>
    const iframe = document.getElementById('inspector');
    const buffer = [];
    let connected = false;
    window.addEventListener('message', (e) => {
      if (e.data && e.data.type === '@statelyai.connected') {
        connected = true;
        for (const event of buffer) iframe.contentWindow.postMessage(event, '*');
        buffer.length = 0;
      }
    });
    const ws = new WebSocket('ws://' + location.host);
    ws.onmessage = (message) => {
      const event = JSON.parse(message.data);
      if (connected) iframe.contentWindow.postMessage(event, '*');
      else buffer.push(event);
    };
  </script>
</body>
</html>`;
}

function escapeAttribute(text: string): string {
  return text.replace(/&/g, '&amp;').replace(/"/g, '&quot;').replace(/</g, '&lt;');
}

