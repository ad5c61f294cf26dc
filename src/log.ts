import { pino, type Logger } from 'pino';

export type { Logger };

/**
 * Structured logs to stderr (stdout is for data). Secrets are redacted wherever they
 * appear in a logged object.
 */
export function createLogger(level: string): Logger {
  return pino(
    {
      level,
      base: undefined,
      redact: {
        paths: ['apiKey', '*.apiKey', 'ANTHROPIC_API_KEY', '*.ANTHROPIC_API_KEY', 'token', '*.token', 'pass', '*.pass'],
        censor: '[redacted]',
      },
    },
    pino.destination(2),
  );
}

/** For tests and library use: logs nothing. */
export const silentLogger: Logger = pino({ level: 'silent' });
