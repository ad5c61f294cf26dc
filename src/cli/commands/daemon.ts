import { Option, type Command } from 'commander';
import { loadConfig } from '../../config.js';
import { InspectorServerError } from '../../inspector/server.js';
import { createLogger } from '../../log.js';
import { connectBus, startDaemonService, startWorkerService } from '../../services.js';
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

/** `microtask daemon`: serves the bus protocol until a signal (embedded, or on NATS). */
export function addDaemonCommand(program: Command, setExit: (code: number) => void) {
  program
    .command('daemon')
    .description('serve the bus protocol: tool builds, flows of any pattern, status, cancel (docs/protocol.md)')
    .option('--worker', 'with NATS_URL: also run a worker in this process')
    .addOption(flowsOption())
    .option('--inspect', "send every flow's actors to Stately's inspector (@statelyai/inspect)")
    .addOption(new Option('--inspector-port <n>', 'serve the inspector page on this port (default MICROTASK_INSPECTOR_PORT, 7420)').argParser(port))
    .option('--no-inspector', 'do not serve the inspector page')
    .addOption(new Option('--http-port <n>', 'serve /healthz, /readyz and /metrics on this port (default MICROTASK_HTTP_PORT; unset: not served)').argParser(port))
    .addHelpText(
      'after',
      `
With NATS_URL set it serves NATS clients and keeps snapshots in NATS KV; without it, it runs embedded
(in-process bus, microtasks in this process, snapshots under MICROTASK_STATE_DIR). On start it resumes
every unfinished flow. It serves the inspector page on http://MICROTASK_INSPECTOR_HOST:PORT (127.0.0.1:7420).

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
  const inspectorPort = options.inspectorPort ?? config.MICROTASK_INSPECTOR_PORT;
  // Before anything starts: a daemon refused for its port should not have resumed flows first.
  if (options.inspector !== false && (await isPortTaken(config.MICROTASK_INSPECTOR_HOST, inspectorPort))) throw inspectorPortTaken(inspectorPort);
  const ops = await OpsEndpoint.prepare(config, options.httpPort ?? config.MICROTASK_HTTP_PORT, '--http-port');
  const metrics = ops ? { metrics: ops.metrics } : {};
  const logger = createLogger(config.MICROTASK_LOG_LEVEL ?? 'info');
  const bus = await connectBus(config, logger, 'daemon');
  const stately = options.inspect ? await statelyFor(logger) : undefined;
  // Embedded, microtasks run in the daemon itself; with NATS, on workers (or here with --worker).
  const withWorker = options.worker === true && bus.transport === 'nats';
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
  const where = bus.transport === 'nats' ? `NATS ${config.NATS_URL!.join(', ')}` : 'embedded (no NATS_URL): requests from this process only';
  logger.info({ transport: bus.transport, worker: withWorker, inspector: inspector?.url, http }, `daemon ready: ${where}`);
  const grace = config.MICROTASK_SHUTDOWN_GRACE_MS;
  return serveUntilSignal(async () => {
    // /readyz answers 503 from here on, until the process exits.
    ops?.drain();
    await inspector?.close();
    // Embedded, the microtasks run here: they get the grace period to finish. With NATS they
    // run on workers, which store each result for the flow whatever the daemon does: its
    // flows stop at once (resumed on the next start, or by another daemon), and a worker in
    // this process drains like any other.
    await Promise.all([daemon.stop(bus.transport === 'nats' ? 0 : grace), worker ? drainWorker(worker, grace, logger) : undefined]);
    stately?.stop();
    await bus.close();
    await ops?.close();
  }, logger, {
    stopping:
      bus.transport === 'nats'
        ? `no new requests; flows saved to resume (their microtasks stay with the workers)${withWorker ? '; the worker here finishes its tasks in flight' : ''}`
        : `no new requests; the microtasks in flight get ${grace} ms to finish, then every flow is saved`,
    abandon: 'every flow is saved as of its last step: the next start resumes it',
  });
}
