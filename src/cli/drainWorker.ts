import type { Logger } from '../log.js';
import type { Worker } from '../worker.js';

/**
 * Stops a worker: no new task, those in flight get `graceMs` to finish (their results
 * stored and acked); then their calls are stopped and their tasks go back to the queue for
 * another worker. Resolves once every handler has settled, so the bus can close after.
 */
export async function drainWorker(worker: Worker, graceMs: number, logger: Logger) {
  const stopping = worker.stop();
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<'late'>((resolve) => (timer = setTimeout(() => resolve('late'), graceMs)));
  const outcome = await Promise.race([stopping.then(() => 'stopped' as const), late]);
  clearTimeout(timer);
  if (outcome === 'late') {
    logger.warn({ graceMs }, 'grace period over: stopping the model calls still running; their tasks go back to the queue');
    worker.abortInFlight();
    await stopping;
  }
}
