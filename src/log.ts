import { pino, type DestinationStream, type Logger } from 'pino';
import { scrubSecrets } from './secrets.js';

export type { Logger };

/**
 * Structured logs to stderr (stdout is for data). Secrets are redacted wherever they
 * appear: by field name in a logged object, and in the whole line as written, so a key
 * quoted inside a message, an error's text or its stack never reaches the log.
 */
export function createLogger(level: string, destination: DestinationStream = pino.destination(2)): Logger {
  return pino(
    {
      level,
      base: undefined,
      redact: {
        paths: ['apiKey', '*.apiKey', 'ANTHROPIC_API_KEY', '*.ANTHROPIC_API_KEY', 'token', '*.token', 'pass', '*.pass'],
        censor: '[redacted]',
      },
      hooks: { streamWrite: scrubSecrets },
    },
    destination,
  );
}

/** For tests and library use: logs nothing. */
export const silentLogger: Logger = pino({ level: 'silent' });
