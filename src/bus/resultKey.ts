import { createHash } from 'node:crypto';

/**
 * A KV key for an idempotency key. Keys made by the flows (`<flowId>/module/auth/generate/0`)
 * are valid KV keys as they are and stay readable; anything else is hashed.
 */
export function resultKey(key: string): string {
  const readable = /^[A-Za-z0-9_=/-][A-Za-z0-9_=./-]{0,200}$/.test(key) && !key.endsWith('.') && !key.includes('..');
  return readable ? key : `sha256.${createHash('sha256').update(key).digest('hex')}`;
}
