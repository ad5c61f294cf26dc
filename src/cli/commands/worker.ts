import { Option, type Command } from 'commander';
import { loadConfig } from '../../config.js';
import { createLogger } from '../../log.js';
import { connectBus, requireNats } from '../../composition.js';
import { startWorkerService } from '../../services.js';
import { drainWorker } from '../drainWorker.js';
import { flowsOption } from '../flowsOption.js';
import { OpsEndpoint } from '../opsEndpoint.js';
import { port, positiveInt } from '../optionParsers.js';
import { serveUntilSignal } from '../serveUntilSignal.js';

/** `microtask worker`: takes microtasks from the NATS work queue until a signal. */
export function addWorkerCommand(program: Command, setExit: (code: number) => void) {
  program
    .command('worker')
    .description('take microtasks from the NATS work queue and run them (needs NATS_URL)')
    .addOption(new Option('-c, --concurrency <n>', 'tasks in flight at most (default MICROTASK_WORKER_CONCURRENCY, 8)').argParser(positiveInt('--concurrency')))
    .addOption(flowsOption())
    .addOption(new Option('--http-port <n>', 'serve /healthz, /readyz and /metrics on this port (default MICROTASK_HTTP_PORT; unset: not served)').argParser(port))
    .addHelpText(
      'after',
      '\nRun as many as you like, on any machines, against the same NATS: they share the queue.\nSIGINT/SIGTERM: take no new task, finish those in flight (MICROTASK_SHUTDOWN_GRACE_MS), exit 0.',
    )
    .action(async (options: { concurrency?: number; httpPort?: number }) => {
      setExit(await workerCommand(options));
    });
}

async function workerCommand(options: { concurrency?: number; httpPort?: number }) {
  const config = loadConfig();
  requireNats(config, 'worker');
  const ops = await OpsEndpoint.prepare(config, options.httpPort ?? config.MICROTASK_HTTP_PORT, '--http-port');
  const logger = createLogger(config.MICROTASK_LOG_LEVEL ?? 'info');
  const bus = await connectBus(config, logger, 'worker');
  const worker = await startWorkerService(
    bus,
    options.concurrency ? { ...config, MICROTASK_WORKER_CONCURRENCY: options.concurrency } : config,
    logger,
    undefined,
    ops ? { metrics: ops.metrics } : {},
  );
  const http = await ops?.serve(bus, logger, '--http-port').catch(async (e: unknown) => {
    await worker.stop();
    await bus.close();
    throw e;
  });
  if (http) logger.info({ http }, `worker health and metrics on ${http}`);
  return serveUntilSignal(async () => {
    ops?.drain();
    await drainWorker(worker, config.MICROTASK_SHUTDOWN_GRACE_MS, logger);
    await bus.close();
    await ops?.close();
  }, logger, {
    stopping: `no new tasks; those in flight get ${config.MICROTASK_SHUTDOWN_GRACE_MS} ms to finish, then go back to the queue`,
    abandon: 'tasks in flight go back to the queue when their ack wait runs out, for another worker',
  });
}
