import { BusError, toText } from './Bus.js';

/**
 * The rules of NATS that every transport applies the same way before a message leaves the
 * process: subject and name syntax, subject matching, KV keys, work-queue defaults and the
 * dead-letter payload. Its own module so that no transport imports another.
 */

export const WORK_QUEUE_DEFAULTS = {
  ackWaitMs: 30_000,
  maxDeliver: 5,
  duplicateWindowMs: 120_000,
  retryAfterThrowMs: 500,
} as const;

const tokens = (subject: string) => subject.split('.');

/** A subject or filter: non-empty tokens without spaces; `>` only as the last token. */
export function isValidSubject(subject: string, { wildcards }: { wildcards: boolean }): boolean {
  if (typeof subject !== 'string' || subject.length === 0 || /\s/.test(subject)) return false;
  const parts = tokens(subject);
  return parts.every((token, i) => {
    if (token.length === 0) return false;
    if (token === '>') return wildcards && i === parts.length - 1;
    if (token === '*') return wildcards;
    return !token.includes('*') && !token.includes('>');
  });
}

/**
 * Whether `subject` (no wildcards) is matched by `pattern` (`*` one token, `>` the rest).
 * Walks both strings token by token in place, without splitting them: the in-process bus
 * matches every message against every subscription, stream and replay, and the arrays and
 * strings a split makes were a steady share of the embedded daemon's garbage.
 */
export function subjectMatches(pattern: string, subject: string): boolean {
  // The start of the current token of each; -1: no token left.
  let p = 0;
  let s = 0;
  for (;;) {
    const pEnd = tokenEnd(pattern, p);
    const pLen = pEnd - p;
    if (pLen === 1 && pattern.charCodeAt(p) === GT) return s !== -1;
    if (s === -1) return false;
    const sEnd = tokenEnd(subject, s);
    if (!(pLen === 1 && pattern.charCodeAt(p) === STAR) && !sameToken(pattern, p, subject, s, pLen, sEnd - s)) return false;
    const pNext = pEnd < pattern.length ? pEnd + 1 : -1;
    const sNext = sEnd < subject.length ? sEnd + 1 : -1;
    if (pNext === -1) return sNext === -1;
    p = pNext;
    s = sNext;
  }
}

/** subjectMatches on split tokens: the rule written plainly (the tests hold the two to each other). */
export function subjectMatchesByTokens(pattern: string, subject: string): boolean {
  const p = tokens(pattern);
  const s = tokens(subject);
  for (let i = 0; i < p.length; i++) {
    if (p[i] === '>') return s.length > i;
    if (i >= s.length) return false;
    if (p[i] !== '*' && p[i] !== s[i]) return false;
  }
  return p.length === s.length;
}

const GT = 62;
const STAR = 42;

/** Where the token starting at `from` ends: its dot, or the end of the text. */
function tokenEnd(text: string, from: number): number {
  const dot = text.indexOf('.', from);
  return dot === -1 ? text.length : dot;
}

function sameToken(a: string, aFrom: number, b: string, bFrom: number, aLen: number, bLen: number): boolean {
  if (aLen !== bLen) return false;
  for (let i = 0; i < aLen; i++) if (a.charCodeAt(aFrom + i) !== b.charCodeAt(bFrom + i)) return false;
  return true;
}

/** Whether every subject matched by `narrow` is matched by `wide`. */
export function subjectCovers(wide: string, narrow: string): boolean {
  const w = tokens(wide);
  const n = tokens(narrow);
  for (let i = 0; i < w.length; i++) {
    if (w[i] === '>') return n.length > i;
    if (i >= n.length || n[i] === '>') return false;
    if (w[i] !== '*' && (n[i] === '*' || w[i] !== n[i])) return false;
  }
  return w.length === n.length;
}

/** Whether some subject is matched by both `a` and `b`. */
export function subjectsCollide(a: string, b: string): boolean {
  const x = tokens(a);
  const y = tokens(b);
  for (let i = 0; i < Math.max(x.length, y.length); i++) {
    if (x[i] === '>') return y.length > i;
    if (y[i] === '>') return x.length > i;
    if (i >= x.length || i >= y.length) return false;
    if (x[i] !== '*' && y[i] !== '*' && x[i] !== y[i]) return false;
  }
  return true;
}

/** Names of queues, buckets and logs become parts of stream names: keep them plain. */
export function assertName(kind: string, name: string): void {
  if (!/^[A-Za-z0-9_-]+$/.test(name)) {
    throw new BusError('INVALID_NAME', `${kind} name "${name}" may only contain letters, digits, "_" and "-"`);
  }
}

/** Throws INVALID_NAME, saying the rule, for a subject (or a filter, with wildcards) NATS would refuse. */
export function assertSubject(subject: string, wildcards: boolean, what = 'subject'): void {
  if (!isValidSubject(subject, { wildcards })) {
    throw new BusError(
      'INVALID_NAME',
      `invalid ${what} "${subject}": use dot-separated tokens without spaces` +
        (wildcards ? ', with "*" for one token and ">" only at the end' : ' and without wildcards'),
    );
  }
}

const validKey = /^[-/=.\w]+$/;
/** The NATS KV key rules: letters, digits, `-/_=.`, not starting or ending with a dot. */
export function assertKvKey(key: string): void {
  if (!validKey.test(key) || key.startsWith('.') || key.endsWith('.')) {
    throw new BusError('INVALID_NAME', `invalid KV key "${key}": use letters, digits and -/_=. (not at either end for ".")`);
  }
}

export function deadLetterPayload(id: string, reason: string, deliveryCount: number, data: Uint8Array): string {
  return JSON.stringify({ id, reason, deliveryCount, data: toText(data) });
}
