import { createServer } from 'node:net';
import { createWebSocketInspector } from '@statelyai/inspect';
import { createInspectorServer } from '@statelyai/inspect/server';
import type { InspectionEvent } from 'xstate';
import type { Logger } from '../log.js';

export interface StatelyInspectorOptions {
  logger: Logger;
  /**
   * The port of the local bridge: a page that embeds Stately's inspector and a WebSocket
   * the flows' inspection events go through. Default 7421 (next to our own inspector's 7420).
   */
  port?: number;
  /** Open the bridge page in the default browser (default false: a daemon often runs headless). */
  open?: boolean;
  /** Stately's inspector UI, embedded by the bridge page (default https://stately.ai/inspect). */
  inspectorUrl?: string;
}

export interface StatelyInspector {
  /** The bridge page to open in a browser (it embeds Stately's hosted inspector). */
  url: string;
  /** Pass as FlowHost's `inspect` option: every inspection event of every flow goes to Stately's inspector. */
  inspect: (event: InspectionEvent) => void;
  stop(): void;
}

export const DEFAULT_STATELY_PORT = 7421;

/**
 * Connects flows to Stately's visual inspector (@statelyai/inspect, the XState v5
 * successor of @xstate/inspect). Its UI is hosted online, so the Node side is a bridge:
 * `createInspectorServer` serves a page on localhost that embeds https://stately.ai/inspect
 * and relays what `createWebSocketInspector` sends it. A person opens `url`; events sent
 * before the page is open are kept (the last 200) and replayed to it.
 *
 * Our own inspector (server.ts) needs no internet; this one does, in the browser only.
 */
export async function startStatelyInspector(options: StatelyInspectorOptions): Promise<StatelyInspector> {
  const port = options.port ?? DEFAULT_STATELY_PORT;
  // createInspectorServer gives no way to hear that its port is taken: the error would be
  // thrown from an event listener and take the process down. Find out first.
  await assertPortFree(port);
  const server = createInspectorServer({ port, autoOpen: options.open ?? false, ...(options.inspectorUrl ? { url: options.inspectorUrl } : {}) });
  const inspector = createWebSocketInspector({ url: `ws://127.0.0.1:${port}` });
  const url = `http://localhost:${port}`;
  options.logger.info({ url }, `Stately inspector: open ${url} in a browser (it loads Stately's inspector UI from https://stately.ai, so it needs internet access)`);
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
      server.stop();
    },
  };
}

export class StatelyInspectorError extends Error {
  override readonly name = 'StatelyInspectorError';
  constructor(
    readonly code: 'STATELY_PORT_IN_USE',
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

async function assertPortFree(port: number): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    const probe = createServer();
    probe.once('error', (e: NodeJS.ErrnoException) =>
      reject(
        new StatelyInspectorError(
          'STATELY_PORT_IN_USE',
          `cannot start the bridge to Stately's inspector on port ${port}: ${e.code === 'EADDRINUSE' ? 'the port is in use' : e.message}. Choose another port.`,
          { cause: e },
        ),
      ),
    );
    // As createInspectorServer listens: every address, this port.
    probe.listen(port, () => probe.close(() => resolve()));
  });
}
