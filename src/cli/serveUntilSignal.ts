import type { Logger } from '../log.js';
import { ExitCode } from './exitCodes.js';

/**
 * Runs a service until SIGINT or SIGTERM: then `stop` (take no new work, let what is in
 * flight finish), and exit 0. A second signal exits at once.
 */
export async function serveUntilSignal(stop: () => Promise<void>, logger: Logger, what: { stopping: string; abandon: string }): Promise<number> {
  // An embedded daemon has no socket open: without this, Node would find nothing to wait for and exit.
  const keepAlive = setInterval(() => undefined, 1 << 30);
  return new Promise<number>((resolve) => {
    let stopping = false;
    const onSignal = (signal: NodeJS.Signals) => {
      if (stopping) {
        logger.warn({ signal }, `second signal: exiting now (${what.abandon})`);
        process.exit(130);
      }
      stopping = true;
      logger.info({ signal }, `stopping: ${what.stopping} (signal again to exit now)`);
      stop().then(
        () => {
          logger.info('stopped');
          resolve(ExitCode.ok);
        },
        (e: unknown) => {
          logger.error({ err: e }, 'could not stop cleanly');
          resolve(ExitCode.internal);
        },
      );
    };
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
  }).finally(() => clearInterval(keepAlive));
}
