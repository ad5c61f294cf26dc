/**
 * Wrong usage: a bad flag, an unreadable input, an environment that cannot work (NATS_URL
 * unreachable, credentials refused). The person running it can fix it; the CLI exits 2.
 * Outside src/cli because the services the CLI, daemon and worker share raise it too.
 */
export class UsageError extends Error {
  override readonly name = 'UsageError';
  constructor(
    message: string,
    readonly code = 'USAGE',
  ) {
    super(message);
  }
}
