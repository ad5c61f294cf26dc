/**
 * Secrets never reach a stored or logged text. A server may echo a key back in an error
 * (a 401 quoting `Bearer sk-ant-…`), a URL may carry a password, and an error message
 * travels far: snapshots, results, journals, JetStream, `flow.get`, CLI output and logs.
 * So every error message is scrubbed where it is made (ModelError) and every log line
 * where it is written (the logger's hook).
 *
 * The secrets of the configuration are registered once, process-wide (they come from the
 * process's environment); text shaped like a key or credential is scrubbed even when
 * nobody registered it.
 */

export const REDACTED = '[redacted]';

/**
 * Shorter values are not scrubbed by value: replacing every "abc" in every message would
 * make logs unreadable and hide nothing worth hiding. Keys and tokens are far longer.
 */
const MIN_SECRET_LENGTH = 6;

const known = new Set<string>();
let knownPattern: RegExp | undefined;

/** Credentials by their shape, whatever their value. */
const shapes: Array<[RegExp, string]> = [
  // Anthropic API keys and admin keys.
  [/sk-ant-[A-Za-z0-9_-]+/g, REDACTED],
  // A bearer token quoted back (`Authorization: Bearer <token>`). A token has a digit or a
  // sign in it, which keeps prose such as "Bearer authentication." readable.
  [/\bBearer\s+(?=[A-Za-z.]*[0-9_~+/=-])[A-Za-z0-9._~+/=-]{8,}/g, `Bearer ${REDACTED}`],
  // `x-api-key: <key>` or `"x-api-key":"<key>"`.
  [/(x-api-key["']?\s*[:=]\s*["']?)[^\s"',;}]+/gi, `$1${REDACTED}`],
  // The password of a URL: `https://user:secret@host` keeps the user. The scheme is taken
  // from the start of its run of scheme characters (the lookbehind): tried from every letter
  // of a long run, as before, the pattern was quadratic in hostile text (40 KB: a second).
  [/((?<![a-z0-9+.-])[a-z0-9+.-]+:\/\/[^\s/:@"']*:)[^\s/@"']+@/gi, `$1${REDACTED}@`],
];

const escapeRegExp = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/**
 * Registers values to scrub wherever they appear: as written, JSON-escaped (a log line is
 * JSON) and URL-encoded (a password in a URL).
 */
export function addSecrets(...values: Array<string | undefined>): void {
  let added = false;
  for (const value of values) {
    if (value === undefined || value.length < MIN_SECRET_LENGTH) continue;
    for (const form of new Set([value, JSON.stringify(value).slice(1, -1), encodeURIComponent(value)])) {
      if (!known.has(form)) {
        known.add(form);
        added = true;
      }
    }
  }
  if (added) {
    // Longest first: a secret that contains another is replaced whole.
    const alternatives = [...known].sort((a, b) => b.length - a.length).map(escapeRegExp);
    knownPattern = new RegExp(alternatives.join('|'), 'g');
  }
}

/** The text with every registered secret, and anything shaped like a credential, replaced by `[redacted]`. */
export function scrubSecrets(text: string): string {
  let scrubbed = knownPattern ? text.replace(knownPattern, REDACTED) : text;
  for (const [shape, replacement] of shapes) scrubbed = scrubbed.replace(shape, replacement);
  return scrubbed;
}

/**
 * `value` with every registered secret replaced in its strings and keys; the value itself
 * when none is in it. For what a model server sends back (an answer, its model's name, a
 * request id): a gateway may echo the key there, and an answer is stored, journaled and
 * published. Shapes are not applied: an answer may hold a URL or a `Bearer` of its own.
 */
export function scrubKnownSecrets<T>(value: T): T {
  if (!knownPattern || value === undefined) return value;
  const pattern = knownPattern;
  // One test over the JSON first: nearly every answer holds no secret, and is returned as it is.
  pattern.lastIndex = 0;
  if (!pattern.test(typeof value === 'string' ? value : (JSON.stringify(value) ?? ''))) return value;
  const scrub = (item: unknown): unknown => {
    if (typeof item === 'string') return item.replace(pattern, REDACTED);
    if (Array.isArray(item)) return item.map(scrub);
    if (item !== null && typeof item === 'object') {
      return Object.fromEntries(Object.entries(item).map(([key, child]) => [key.replace(pattern, REDACTED), scrub(child)]));
    }
    return item;
  };
  return scrub(value) as T;
}

/** The user name and password of a URL, decoded; undefined parts when it has none or is not a URL. */
export function urlCredentials(url: string): { username?: string; password?: string } {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    return {};
  }
  const decode = (s: string) => {
    try {
      return decodeURIComponent(s);
    } catch {
      return s;
    }
  };
  return {
    ...(parsed.username ? { username: decode(parsed.username) } : {}),
    ...(parsed.password ? { password: decode(parsed.password) } : {}),
  };
}

/**
 * A URL fit to print: `https://user:secret@host/` → `https://user:***@host/`. A user with
 * no password may itself be a token (`https://<token>@host/`), so it is hidden too.
 */
export function displayUrl(url: string): string {
  return url.replace(/^([a-z][a-z0-9+.-]*:\/\/)([^/?#@]*)@/i, (_, scheme: string, userinfo: string) => {
    const colon = userinfo.indexOf(':');
    return colon < 0 ? `${scheme}***@` : `${scheme}${userinfo.slice(0, colon)}:***@`;
  });
}

/** The configured values that are secrets (keys, passwords, tokens, a URL's credentials). */
export function secretsOfConfig(config: {
  ANTHROPIC_API_KEY?: string | undefined;
  ANTHROPIC_BASE_URL?: string | undefined;
  NATS_URL?: string[] | undefined;
  NATS_TOKEN?: string | undefined;
  NATS_PASSWORD?: string | undefined;
  NATS_NKEY_SEED?: string | undefined;
}): string[] {
  const ofUrl = (url: string | undefined) => {
    if (url === undefined) return [];
    const { username, password } = urlCredentials(url);
    // A user alone may be a token; a user beside a password is a name.
    return password !== undefined ? [password] : username !== undefined ? [username] : [];
  };
  return [
    config.ANTHROPIC_API_KEY,
    config.NATS_TOKEN,
    config.NATS_PASSWORD,
    config.NATS_NKEY_SEED,
    ...ofUrl(config.ANTHROPIC_BASE_URL),
    ...(config.NATS_URL ?? []).flatMap(ofUrl),
  ].filter((s): s is string => s !== undefined);
}
