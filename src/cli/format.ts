import { actorLabel } from '../inspector/page/actorLabel.js';

/** A state value as people read it: `verifying`, `building.modules`, `a.x, b.y` for parallel regions. */
export function formatState(value: unknown): string {
  if (value === null || value === undefined) return '-';
  if (typeof value === 'string') return value;
  if (typeof value !== 'object') return String(value);
  const parts = Object.entries(value as Record<string, unknown>).map(([key, child]) => {
    const inner = formatState(child);
    return child && typeof child === 'object' && Object.keys(child).length > 1 ? `${key}.(${inner})` : `${key}.${inner}`;
  });
  return parts.join(', ');
}

/**
 * An actor of a flow and its state, by the name a person knows (the inspector uses the same
 * labels): `toolBuilder: analyzing`, `module auth: verifying`, `integration: reviewing`.
 * `actor` is the journal's path (`root`, `module:auth`), `machine` the root's machine id.
 */
export const formatActorState = (actor: string, machine: string, state: string) => `${actorLabel(actor, machine)}: ${state}`;

export const formatTokens = (input: number, output: number) =>
  `${(input + output).toLocaleString('en-US')} tokens (${input.toLocaleString('en-US')} in, ${output.toLocaleString('en-US')} out)`;

export const formatMs = (ms: number) => (ms < 1_000 ? `${Math.round(ms)} ms` : `${(ms / 1_000).toFixed(ms < 10_000 ? 2 : 1)} s`);

/**
 * What a person does about a store that stopped a flow, from the cause's errno
 * (`describeStoreError`'s lines start with it): space, permissions, or wait for the store.
 */
function storeRemedy(cause: string): string {
  if (/^(ENOSPC|EDQUOT)\b/.test(cause)) return 'free space';
  if (/^EROFS\b/.test(cause)) return 'make it writable';
  if (/^(EACCES|EPERM)\b/.test(cause)) return 'fix its permissions';
  return 'once the store is back';
}

/**
 * One line for a flow its store stopped (a full disk): the cause, where the flow stands and
 * what to do. `flowId` unset: the start itself was refused, nothing was saved.
 */
export function describeStoreStop(stop: { cause: string; flowId?: string; step?: number }): string {
  const cause = stop.cause.split('\n', 1)[0]!;
  const remedy = storeRemedy(cause);
  if (stop.flowId === undefined) return `${cause}: the flow did not start (nothing saved, no model call); ${remedy}, then run the command again`;
  const where = stop.step === undefined ? '' : ` at step ${stop.step}`;
  return `${cause}: the flow ${stop.flowId} stopped${where} (saved, resumable); ${remedy}, then \`microtask resume ${stop.flowId}\``;
}

/**
 * Text a model or a client wrote, fit for a terminal: its control characters shown
 * (`\u001b`) instead of obeyed. An escape sequence in a model's answer would otherwise write
 * the clipboard (OSC 52), retitle the window or clear the screen, and a carriage return alone
 * would hide what came before it on the line. Line ends and tabs stay.
 */
export const visibleControls = (text: string) =>
  text.replace(/[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]|\r(?!\n)/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
