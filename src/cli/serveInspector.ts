import type { Config } from '../config.js';
import type { provideFlows } from '../flows.js';
import type { Inbox } from '../inbox/Inbox.js';
import { startInspectorServer, type InspectorServerOptions } from '../inspector/server.js';
import type { Journal } from '../journal/Journal.js';
import type { Logger } from '../log.js';
import type { SnapshotStore } from '../persistence/SnapshotStore.js';

/** The inspector page of the daemon (or of `microtask inspect`), where the config says. */
export async function serveInspector(
  parts: { store: SnapshotStore; journal?: Journal | undefined; flows: ReturnType<typeof provideFlows>; inbox: Inbox; running?: InspectorServerOptions['running'] },
  config: Config,
  logger: Logger,
  port: number,
) {
  if (!parts.journal) throw new Error('no journal to show');
  const { journal, store, flows, inbox, running } = parts;
  const token = config.MICROTASK_INSPECTOR_TOKEN;
  const server = await startInspectorServer({ journal, store, flows, inbox, ...(running ? { running } : {}), ...(token ? { token } : {}), logger, host: config.MICROTASK_INSPECTOR_HOST, port });
  return server;
}
