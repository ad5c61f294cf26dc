import { startStatelyInspector } from '../inspector/stately.js';
import type { Logger } from '../log.js';
import { UsageError } from './exitCodes.js';

/** Stately's inspector (@statelyai/inspect) for `--inspect`. */
export async function statelyFor(logger: Logger) {
  const stately = await startStatelyInspector({ logger }).catch((e: unknown) => {
    throw new UsageError(`--inspect: ${(e as Error).message}`, 'STATELY_INSPECTOR');
  });
  process.stderr.write(`Stately inspector: open ${stately.url} in a browser (it loads Stately's UI from the internet)\n`);
  return stately;
}
