import { loadConfig } from '../config.js';
import { answersWith, fallbacksWith } from '../flows.js';
import { createLogger } from '../log.js';
import { createRuntime } from '../runtime.js';

/** The embedded runtime of a one-shot command (run, build, resume), with the user's answers and fallbacks. */
export async function startRuntime(options: { quiet?: boolean } = {}) {
  const config = loadConfig();
  // One-shot commands print progress and a summary; logs are for what went wrong.
  const logger = createLogger(config.MICROTASK_LOG_LEVEL ?? 'error');
  const runtime = await createRuntime(config, logger, { answers: answersWith(), fallbacks: fallbacksWith() });
  if (!options.quiet) process.stderr.write(`model: ${runtime.modelDescription}\n`);
  return runtime;
}
