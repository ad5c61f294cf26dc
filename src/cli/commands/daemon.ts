import { Option, type Command } from 'commander';
import { loadConfig } from '../../config.js';
import { InspectorServerError } from '../../inspector/server.js';
import { createLogger } from '../../log.js';
import { connectBus, requireNats } from '../../composition.js';
import { startDaemonService, startWorkerService } from '../../services.js';
import { drainWorker } from '../drainWorker.js';
import { UsageError } from '../exitCodes.js';
import { flowsOption } from '../flowsOption.js';
import { OpsEndpoint } from '../opsEndpoint.js';
import { port } from '../optionParsers.js';
import { isPortTaken } from '../ports.js';
import { serveInspector } from '../serveInspector.js';
import { serveUntilSignal } from '../serveUntilSignal.js';
import { statelyFor } from '../statelyInspector.js';

interface DaemonOptions {
  worker?: boolean;
  inspect?: boolean;
  inspector?: boolean;
  inspectorPort?: number;
  httpPort?: number;
}

/** `microtask daemon`: serves the bus protocol on NATS until a signal. */
export function addDaemonCommand(program: Command, setExit: (code: number) => void) {
  program
    .command('daemon')
    .description('serve the bus protocol: tool builds, flows of any pattern, status, cancel (docs/protocol.md)')
    .option('--worker', 'also run a worker in this process')
    .addOption(flowsOption())
    .option('--inspect', "send every flow's actors to Stately's inspector (@statelyai/inspect)")
    .addOption(new Option('--inspector-port <n>', 'serve the inspector page on this port (default MICROTASK_INSPECTOR_PORT, 7420)').argParser(port))
    .option('--no-inspector', 'do not serve the inspector page')
    .addOption(new Option('--http-port <n>', 'serve /healthz, /readyz and /metrics on this port (default MICROTASK_HTTP_PORT; unset: not served)').argParser(port))
    .addHelpText(
      'after',
      `
It serves NATS clients (NATS_URL; \`microtask dev\` starts a nats-server, a daemon and a worker for you)
and keeps snapshots in NATS KV; microtasks run on workers (or here, with --worker). On start it resumes
every unfinished flow. It serves the inspector page on http://MICROTASK_INSPECTOR_HOST:PORT (127.0.0.1:7420).
Without NATS, \`microtask run\` runs a flow in its own process and the library embeds the orchestrator.

SIGINT/SIGTERM: stop taking requests, let the microtasks in flight finish (MICROTASK_SHUTDOWN_GRACE_MS,
20 s), save every flow, close the connection, exit 0. A second signal exits at once (exit 130): the
snapshots make that safe, and a restart resumes the flows.`,
    )
    .action(async (options: DaemonOptions) => {
      setExit(await daemonCommand(options));
    });
}

/** A daemon's inspector port taken: the user's to fix, in one line (exit 2). */
const inspectorPortTaken = (port: number) =>
  new UsageError(`port ${port} is taken (another daemon serves its inspector there?): choose another with --inspector-port (0: any free port), or --no-inspector`, 'PORT_IN_USE');

async function daemonCommand(options: DaemonOptions) {
  const config = loadConfig();
  // Before anything else: a daemon is what clients reach over NATS; without it there is none.
  requireNats(config, 'daemon');
  const inspectorPort = options.inspectorPort ?? config.MICROTASK_INSPECTOR_PORT;
  // Before anything starts: a daemon refused for its port should not have resumed flows first.
  if (options.inspector !== false && (await isPortTaken(config.MICROTASK_INSPECTOR_HOST, inspectorPort))) throw inspectorPortTaken(inspectorPort);
  const ops = await OpsEndpoint.prepare(config, options.httpPort ?? config.MICROTASK_HTTP_PORT, '--http-port');
  const metrics = ops ? { metrics: ops.metrics } : {};
  const logger = createLogger(config.MICROTASK_LOG_LEVEL ?? 'info');
  const bus = await connectBus(config, logger, 'daemon');
  const stately = options.inspect ? await statelyFor(logger) : undefined;
  // Microtasks run on workers, or here with --worker.
  const withWorker = options.worker === true;
  const worker = withWorker ? await startWorkerService(bus, config, logger, undefined, metrics) : undefined;
  const daemon = await startDaemonService(bus, config, logger, { ...(stately ? { inspect: stately.inspect } : {}), ...metrics });
  const http = await ops?.serve(bus, logger, '--http-port').catch(async (e: unknown) => {
    await Promise.all([daemon.stop(0), worker?.stop()]);
    stately?.stop();
    await bus.close();
    throw e;
  });
  const inspector =
    options.inspector === false
      ? undefined
      : await serveInspector(daemon.parts, config, logger, inspectorPort).catch(async (e: unknown) => {
          if (e instanceof InspectorServerError && e.code === 'INSPECTOR_PORT_IN_USE') {
            // Taken since the check above: undo the start, then refuse as the check would have.
            await Promise.all([daemon.stop(0), worker?.stop()]);
            stately?.stop();
            await bus.close();
            throw inspectorPortTaken(inspectorPort);
          }
          // The daemon is worth running without its page: say why there is none.
          logger.error({ err: e }, `inspector page not served: ${(e as Error).message}`);
          return undefined;
        });
  logger.info({ transport: bus.transport, worker: withWorker, inspector: inspector?.url, http }, `daemon ready: NATS ${config.NATS_URL!.join(', ')}`);
  const grace = config.MICROTASK_SHUTDOWN_GRACE_MS;
  return serveUntilSignal(async () => {
    // /readyz answers 503 from here on, until the process exits.
    ops?.drain();
    await inspector?.close();
    // The microtasks run on workers, which store each result for the flow whatever the
    // daemon does: its flows stop at once (resumed on the next start, or by another daemon),
    // and a worker in this process drains like any other.
    await Promise.all([daemon.stop(0), worker ? drainWorker(worker, grace, logger) : undefined]);
    stately?.stop();
    await bus.close();
    await ops?.close();
  }, logger, {
    stopping: `no new requests; flows saved to resume (their microtasks stay with the workers)${withWorker ? '; the worker here finishes its tasks in flight' : ''}`,
    abandon: 'every flow is saved as of its last step: the next start resumes it',
  });
}
