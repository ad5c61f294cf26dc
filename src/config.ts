import { z } from 'zod';
import { addSecrets, secretsOfConfig } from './secrets.js';
import { MAX_MICROTASK_TIMEOUT_MS, MAX_TOKENS } from './contracts/limits.js';

/**
 * The environment, checked once at start. Every variable is optional; an empty value
 * counts as unset (docker-compose and CI often pass `VAR=`).
 */
const emptyIsUnset = (v: unknown) => (typeof v === 'string' && v.trim() === '' ? undefined : v);
const opt = <T extends z.ZodType>(schema: T) => z.preprocess(emptyIsUnset, schema.optional());
const withDefault = <T extends z.ZodType>(schema: T, fallback: z.input<T>) =>
  z.preprocess(emptyIsUnset, schema.default(fallback as never));

const millis = (min: number, max: number) =>
  z.coerce
    .number({ error: `a whole number of milliseconds between ${min} and ${max}` })
    .int({ error: `a whole number of milliseconds between ${min} and ${max}` })
    .min(min, { error: `a whole number of milliseconds between ${min} and ${max}` })
    .max(max, { error: `a whole number of milliseconds between ${min} and ${max}` });

const count = (min: number, max: number, what: string) =>
  z.coerce
    .number({ error: `a whole number of ${what} between ${min} and ${max}` })
    .int({ error: `a whole number of ${what} between ${min} and ${max}` })
    .min(min, { error: `a whole number of ${what} between ${min} and ${max}` })
    .max(max, { error: `a whole number of ${what} between ${min} and ${max}` });

const natsUrls = z
  .string()
  .refine((s) => !s.includes('@'), {
    error: 'servers without credentials: set NATS_USER and NATS_PASSWORD, NATS_TOKEN, NATS_NKEY_SEED or NATS_CREDS instead',
  })
  .transform((s) => s.split(',').map((u) => u.trim()).filter(Boolean))
  .pipe(
    z
      .array(
        z.string().regex(/^((nats|tls|ws|wss):\/\/)?[^\s/:,]+(:\d+)?$/, {
          error: 'a comma-separated list of servers such as nats://127.0.0.1:4222',
        }),
      )
      .min(1, { error: 'a comma-separated list of servers such as nats://127.0.0.1:4222' }),
  );

/** How generated code is isolated when the tool builder runs it (src/actors/sandbox.ts); `none` never runs it. */
export const SANDBOX_CHOICES = ['auto', 'bwrap', 'unshare', 'none'] as const;

export const EnvSchema = z.object({
  NATS_URL: opt(natsUrls),
  /** NATS auth, one of: a token; a user and password; an nkey seed; a creds file. */
  NATS_TOKEN: opt(z.string()),
  NATS_USER: opt(z.string()),
  NATS_PASSWORD: opt(z.string()),
  NATS_NKEY_SEED: opt(z.string().regex(/^SU[A-Z2-7]+$/, { error: 'an nkey user seed, starting with SU' })),
  NATS_CREDS: opt(z.string()),
  /** TLS to NATS: a CA to trust, and a client certificate and key when the server asks for one. */
  NATS_TLS_CA: opt(z.string()),
  NATS_TLS_CERT: opt(z.string()),
  NATS_TLS_KEY: opt(z.string()),
  ANTHROPIC_API_KEY: opt(z.string()),
  ANTHROPIC_BASE_URL: opt(z.url({ error: 'an http(s) URL such as http://127.0.0.1:8080' })),
  MICROTASK_MODEL: withDefault(z.string(), 'claude-haiku-5-5'),
  MICROTASK_STATE_DIR: withDefault(z.string(), '.microtask'),
  MICROTASK_TIMEOUT_MS: withDefault(millis(1, MAX_MICROTASK_TIMEOUT_MS), 30_000),
  MICROTASK_MAX_TOKENS: withDefault(count(1, MAX_TOKENS, 'tokens'), 1024),
  MICROTASK_MAX_RETRIES: withDefault(count(0, 10, 'retries'), 2),
  MICROTASK_MAX_RETRY_WAIT_MS: withDefault(millis(0, 600_000), 30_000),
  MICROTASK_CASSETTE: opt(z.string()),
  MICROTASK_RECORD: opt(z.string()),
  /** Unset: `info` for the daemon and workers, `warn` for one-shot commands (run, build). */
  MICROTASK_LOG_LEVEL: opt(
    z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'], {
      error: 'one of fatal, error, warn, info, debug, trace, silent',
    }),
  ),
  /**
   * Finished flows older than this are pruned from the snapshot store (when the CLI and the
   * daemon start); with NATS, every stream and bucket but the snapshots drops what is older.
   */
  MICROTASK_RETENTION_HOURS: withDefault(count(1, 100_000, 'hours'), 168),
  /** With NATS on a cluster: copies of each stream and bucket (JetStream allows 1 to 5; a single server, 1). */
  MICROTASK_STREAM_REPLICAS: withDefault(count(1, 5, 'replicas'), 1),
  /** With NATS: how long a daemon's claim on a flow lasts unrenewed; then another daemon takes it over. */
  MICROTASK_LEASE_MS: withDefault(millis(1_000, 3_600_000), 30_000),
  /** This daemon's name in leases; unset: host name, process id and a random part. */
  MICROTASK_DAEMON_ID: opt(z.string().regex(/^[A-Za-z0-9_.:@-]{1,100}$/, { error: 'letters, digits and _ . : @ - (at most 100)' })),
  MICROTASK_WORKER_CONCURRENCY: withDefault(count(1, 1024, 'tasks in flight'), 8),
  /** A task not acked within this (workers send in-progress acks meanwhile) is delivered again. */
  MICROTASK_ACK_WAIT_MS: withDefault(millis(500, 600_000), 30_000),
  /** Deliveries of a task at most, before its failure is final and it is dead-lettered. */
  MICROTASK_MAX_DELIVER: withDefault(count(1, 100, 'deliveries'), 5),
  /**
   * On SIGINT/SIGTERM, how long the daemon and workers let the microtasks in flight finish
   * (their results saved, so they are not paid for again) before stopping the rest.
   */
  MICROTASK_SHUTDOWN_GRACE_MS: withDefault(millis(0, 600_000), 20_000),
  /** Where the daemon serves its inspector page: localhost by default (0.0.0.0 in a container). */
  MICROTASK_INSPECTOR_HOST: withDefault(z.string().min(1), '127.0.0.1'),
  /** The inspector page's port; 0 picks a free one. */
  MICROTASK_INSPECTOR_PORT: withDefault(count(0, 65_535, 'port number'), 7420),
  /**
   * Asked of every request to the inspector's API (the page sends it): required when
   * MICROTASK_INSPECTOR_HOST is not loopback, since the page shows every prompt and answers flows.
   */
  MICROTASK_INSPECTOR_TOKEN: opt(
    z.string().regex(/^[\x21-\x7e]{16,512}$/, { error: 'a secret of 16 to 512 characters without spaces, e.g. `openssl rand -hex 32`' }),
  ),
  /** Where the daemon and the worker serve /healthz, /readyz and /metrics (0.0.0.0 in a container, for a scraper). */
  MICROTASK_HTTP_HOST: withDefault(z.string().min(1), '127.0.0.1'),
  /** Their port (--http-port); unset: not served; 0 picks a free one. */
  MICROTASK_HTTP_PORT: opt(count(0, 65_535, 'port number')),
  /** The sandbox for generated code: `auto` tries bubblewrap, then unshare; none works: the code is not run. */
  MICROTASK_SANDBOX: withDefault(z.enum(SANDBOX_CHOICES, { error: `one of ${SANDBOX_CHOICES.join(', ')}` }), 'auto'),
  MICROTASK_SUBJECT_PREFIX: withDefault(
    z.string().regex(/^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$/, { error: 'NATS subject tokens such as microtask or acme.microtask' }),
    'microtask',
  ),
});
export type Config = z.infer<typeof EnvSchema>;

export class ConfigError extends Error {
  override readonly name = 'ConfigError';
  readonly code = 'CONFIG_INVALID';
  constructor(readonly problems: Array<{ variable: string; expected: string; got: string }>) {
    super(
      `invalid configuration:\n${problems.map((p) => `  ${p.variable}=${p.got}: expected ${p.expected}`).join('\n')}`,
    );
  }
}

const secret = (variable: string) => /KEY|TOKEN|PASS|SECRET/i.test(variable);
/** `nats://bob:pw@host` → `nats://(hidden)@host`: a value quoted back never shows a password. */
const withoutUserinfo = (value: string) => value.replace(/([a-z][a-z0-9+.-]*:\/\/)[^/@\s,]*@/gi, '$1(hidden)@');

/** Reads the configuration from the environment; throws a {@link ConfigError} naming each bad variable. */
export function loadConfig(env: Record<string, string | undefined> = process.env): Config {
  const parsed = EnvSchema.safeParse(env);
  if (parsed.success) {
    // Scrubbed from every error message and log line from now on (src/secrets.ts).
    addSecrets(...secretsOfConfig(parsed.data), parsed.data.MICROTASK_INSPECTOR_TOKEN);
    return parsed.data;
  }
  throw new ConfigError(
    parsed.error.issues.map((issue) => {
      const variable = String(issue.path[0] ?? '?');
      const raw = env[variable];
      return {
        variable,
        expected: issue.message,
        got: raw === undefined ? '(unset)' : secret(variable) ? '(hidden)' : JSON.stringify(withoutUserinfo(raw)),
      };
    }),
  );
}
