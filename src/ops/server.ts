import { createServer, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Logger } from '../log.js';
import type { Health } from './health.js';
import type { Metrics } from './metrics.js';

export interface OpsServer {
  /** `http://127.0.0.1:9464`: the base of `/healthz`, `/readyz` and `/metrics`. */
  url: string;
  port: number;
  close(): Promise<void>;
}

export class OpsServerError extends Error {
  override readonly name = 'OpsServerError';
  constructor(
    readonly code: 'OPS_PORT_IN_USE' | 'OPS_LISTEN',
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/**
 * What a platform asks of a daemon or a worker, on one port (node:http, no framework):
 *
 * | route | answers |
 * |---|---|
 * | `GET /healthz` | 200 `ok`: the process is alive (it answers) |
 * | `GET /readyz` | 200, or 503 while NATS is unreachable, a store refuses writes, or the process drains; JSON `{ready, checks: [{name, ok, reason?}]}` |
 * | `GET /metrics` | the Prometheus text format (src/ops/metrics.ts) |
 *
 * Nothing here shows a flow's data: unlike the inspector, it may listen on 0.0.0.0 for a
 * scraper in another container.
 */
export async function startOpsServer(options: { host: string; port: number; health: Health; metrics: Metrics; logger: Logger }): Promise<OpsServer> {
  const { health, metrics, logger } = options;
  const server = createServer((request, response) => {
    const path = new URL(request.url ?? '/', 'http://ops.invalid').pathname;
    if (request.method !== 'GET' && request.method !== 'HEAD') {
      response.setHeader('allow', 'GET, HEAD');
      return send(response, 405, 'text/plain; charset=utf-8', `${request.method} is not allowed: use GET\n`);
    }
    const answer = async () => {
      switch (path) {
        case '/healthz':
          return send(response, 200, 'text/plain; charset=utf-8', 'ok\n');
        case '/readyz': {
          const readiness = await health.readiness();
          return send(response, readiness.ready ? 200 : 503, 'application/json', `${JSON.stringify(readiness)}\n`);
        }
        case '/metrics':
          return send(response, 200, metrics.contentType, await metrics.text());
        default:
          return send(response, 404, 'text/plain; charset=utf-8', 'not found: GET /healthz, /readyz or /metrics\n');
      }
    };
    answer().catch((e: unknown) => {
      logger.error({ err: e, path }, 'ops request failed');
      if (!response.headersSent) send(response, 500, 'text/plain; charset=utf-8', `${(e as Error).message}\n`);
      else response.destroy();
    });
  });
  // Probes and scrapes are short: a kept-alive connection must not hold close() up.
  server.keepAliveTimeout = 1_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', (e: NodeJS.ErrnoException) =>
      reject(
        e.code === 'EADDRINUSE'
          ? new OpsServerError('OPS_PORT_IN_USE', `port ${options.port} on ${options.host} is taken`, { cause: e })
          : new OpsServerError('OPS_LISTEN', `cannot listen on ${options.host}:${options.port}: ${e.message}`, { cause: e }),
      ),
    );
    server.listen({ host: options.host, port: options.port, exclusive: true }, () => resolve());
  });
  const port = (server.address() as AddressInfo).port;
  const shownHost = options.host.includes(':') ? `[${options.host}]` : options.host;
  return {
    url: `http://${shownHost}:${port}`,
    port,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

function send(response: ServerResponse, status: number, contentType: string, body: string) {
  response.writeHead(status, { 'content-type': contentType, 'cache-control': 'no-store' });
  response.end(body);
}
