import { mkdir, readFile, unlink, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { loadConfig } from '../config.js';
import { startInspectorServer } from '../inspector/server.js';
import { createLogger, type Logger } from '../log.js';
import { chooseModel } from '../runtime.js';
import { connectBus } from '../composition.js';
import { startDaemonService, startWorkerService } from '../services.js';
import { findNatsServer, freePort, NatsServerMissingError } from '../testing/natsServer.js';
import { assertStateDirectory } from './directories.js';
import { startDevNats, type DevNats } from './devNats.js';
import { drainWorker } from './drainWorker.js';
import { ExitCode, UsageError } from './exitCodes.js';
import { isPortTaken } from './ports.js';

export interface DevOptions {
  natsPort?: number;
  inspectorPort?: number;
}

const HOST = '127.0.0.1';

/**
 * `microtask dev`: the whole local stack, as `temporal server start-dev` gives one: a
 * nats-server (a child process, its JetStream store under the state directory), then in
 * this process the daemon in NATS mode, a worker and the inspector page. Ctrl-C stops them
 * in order, nats-server last.
 *
 * The daemon, worker and inspector run in this process, as `microtask daemon --worker`
 * runs them, rather than as three child processes: what fails at start (a port, the
 * config, the store) is thrown here with its code and one line, readiness is known
 * exactly (no log to parse for a URL), the shutdown order is ours, and there is one log.
 * They still talk over the nats-server (the daemon's microtasks go through the JetStream
 * work queue to the worker), so what runs is the NATS deployment, not the embedded mode.
 */
export async function devCommand(options: DevOptions): Promise<number> {
  const base = loadConfig();
  await assertStateDirectory(base.MICROTASK_STATE_DIR);
  let bin: string;
  try {
    bin = findNatsServer(process.env);
  } catch (e) {
    if (e instanceof NatsServerMissingError) throw new UsageError(e.message, e.code);
    throw e;
  }
  // Every port is checked before anything starts, so a taken one leaves nothing to undo.
  if (options.natsPort && (await isPortTaken(HOST, options.natsPort))) {
    throw new UsageError(`port ${options.natsPort} is taken: choose another --nats-port, or leave it out for a free one`, 'PORT_IN_USE');
  }
  const inspectorPort = options.inspectorPort ?? base.MICROTASK_INSPECTOR_PORT;
  if (await isPortTaken(base.MICROTASK_INSPECTOR_HOST, inspectorPort)) {
    throw new UsageError(`port ${inspectorPort} is taken (a daemon serves its inspector there?): choose another with --inspector-port (0: any free port)`, 'PORT_IN_USE');
  }
  const stateDir = resolve(base.MICROTASK_STATE_DIR);
  const storeDir = join(stateDir, 'nats');
  const logFile = join(stateDir, 'logs', 'nats-server.log');
  await mkdir(join(stateDir, 'logs'), { recursive: true });
  const release = await claimStateDir(stateDir);

  let nats: DevNats;
  try {
    nats = await startDevNats({ bin, port: options.natsPort || (await freePort()), storeDir, logFile });
  } catch (e) {
    await release();
    throw e;
  }
  // Whatever ends this process (an error, a second Ctrl-C's exit), nats-server goes with it.
  let natsGone = false;
  void nats.exited.then(() => (natsGone = true));
  process.once('exit', () => {
    if (!natsGone) process.kill(nats.pid, 'SIGTERM');
  });
  const config = loadConfig({ ...process.env, NATS_URL: nats.url });
  const logger = createLogger(config.MICROTASK_LOG_LEVEL ?? 'info');
  // Stopped last started first: nats-server (then the state directory's claim) at the very end.
  const stops: Array<() => Promise<void>> = [() => nats.stop().then(release)];
  try {
    const bus = await connectBus(config, logger, 'daemon');
    stops.push(() => bus.close());
    // The worker's model, chosen here to say in the summary which model answers.
    const model = await chooseModel({ ...config, MICROTASK_MAX_RETRIES: 0 });
    const worker = await startWorkerService(bus, config, logger, model);
    const daemon = await startDaemonService(bus, config, logger);
    stops.push(() => Promise.all([daemon.stop(0), drainWorker(worker, config.MICROTASK_SHUTDOWN_GRACE_MS, logger)]).then(() => undefined));
    const { store, journal, flows, inbox, running } = daemon.parts;
    const inspector = await startInspectorServer({
      store,
      journal: journal!,
      flows,
      inbox,
      running,
      logger,
      host: config.MICROTASK_INSPECTOR_HOST,
      port: inspectorPort,
      ...(config.MICROTASK_INSPECTOR_TOKEN ? { token: config.MICROTASK_INSPECTOR_TOKEN } : {}),
    });
    stops.push(() => inspector.close());
    process.stdout.write(
      [
        'microtask dev: the local stack is up; Ctrl-C stops it',
        `  NATS       ${nats.url}  (JetStream store ${storeDir}, log ${logFile})`,
        `  inspector  ${inspector.url}`,
        `  state      ${stateDir}`,
        `  model      ${model.description}`,
        `  try        NATS_URL=${nats.url} microtask build examples/api-tester.json`,
        '',
      ].join('\n'),
    );
  } catch (e) {
    await stopAll(stops, logger);
    throw e;
  }
  return untilStopped(stops, nats, logger);
}

/**
 * Two nats-servers on one JetStream store would corrupt it: one `microtask dev` per state
 * directory, its pid in `dev.pid`. A pid file whose process is gone (killed) is taken over.
 */
async function claimStateDir(stateDir: string): Promise<() => Promise<void>> {
  const pidFile = join(stateDir, 'dev.pid');
  for (;;) {
    try {
      await writeFile(pidFile, `${process.pid}\n`, { flag: 'wx' });
      return () => unlink(pidFile).catch(() => undefined);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
    const holder = Number((await readFile(pidFile, 'utf8').catch(() => '')).trim());
    if (holder > 0 && isRunning(holder)) {
      throw new UsageError(`another \`microtask dev\` (pid ${holder}) uses ${stateDir}: stop it, or set MICROTASK_STATE_DIR to another directory`, 'STATE_DIR_IN_USE');
    }
    await unlink(pidFile).catch(() => undefined);
  }
}

function isRunning(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    // EPERM: it runs, as another user.
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Stops what started, last started first; a step that fails is logged, the next still runs. */
async function stopAll(stops: Array<() => Promise<void>>, logger: Logger) {
  for (const stop of stops.reverse()) await stop().catch((e: unknown) => logger.error({ err: e }, 'could not stop cleanly'));
}

/** Serves until SIGINT or SIGTERM (or nats-server's exit); a second signal exits at once (130). */
function untilStopped(stops: Array<() => Promise<void>>, nats: DevNats, logger: Logger): Promise<number> {
  return new Promise<number>((resolveCode) => {
    let stopping = false;
    const stop = (code: number, deadlineMs?: number) => {
      stopping = true;
      // Without its server, the bus may wait for it forever: then the stop has a deadline.
      const late = deadlineMs === undefined ? undefined : new Promise<void>((resolveLate) => setTimeout(resolveLate, deadlineMs).unref());
      Promise.race([stopAll(stops, logger), ...(late ? [late] : [])]).then(
        () => {
          logger.info('stopped');
          resolveCode(code);
        },
        (e: unknown) => {
          logger.error({ err: e }, 'could not stop cleanly');
          resolveCode(ExitCode.internal);
        },
      );
    };
    const onSignal = (signal: NodeJS.Signals) => {
      if (stopping) {
        logger.warn({ signal }, 'second signal: exiting now (every flow is saved as of its last step: the next start resumes it)');
        process.exit(130);
      }
      logger.info({ signal }, 'stopping: the inspector, the daemon (flows saved to resume), the worker (its tasks in flight finish), then nats-server (signal again to exit now)');
      stop(ExitCode.ok);
    };
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
    void nats.exited.then((code) => {
      if (stopping) return;
      logger.error({ code }, 'nats-server exited on its own: stopping the rest (its log says why)');
      stop(ExitCode.internal, 10_000);
    });
  });
}
