import { retentionMs } from '../composition.js';
import type { Config } from '../config.js';
import type { Journal } from '../journal/Journal.js';
import type { Logger } from '../log.js';
import type { PrunableResultsStore } from '../persistence/LogResultsStore.js';
import type { SnapshotStore } from '../persistence/SnapshotStore.js';

/** Finished flows older than the retention go: snapshot stores must not grow without bound. */
export async function prune(store: SnapshotStore, config: Config, logger: Logger, journal?: Journal, results?: PrunableResultsStore) {
  const before = new Date(Date.now() - retentionMs(config));
  const pruned = await store.prune(before);
  const journals = (await journal?.prune(before)) ?? 0;
  // Results older than the retention: their flows are gone (or would start their calls again).
  const resultFiles = (await results?.prune(before)) ?? 0;
  if (pruned || journals || resultFiles) logger.info({ pruned, journals, resultFiles }, 'old finished flows pruned');
}
