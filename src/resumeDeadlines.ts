import { MAX_MICROTASK_TIMEOUT_MS } from './contracts/microtask.js';

/**
 * A microtask's clock runs only while a process runs its flow. Its absolute deadline
 * (`deadlineAt`, put in its input when it starts: src/actors/microtask.ts `withDeadline`)
 * is kept across a restore so a crash does not give it a fresh timeout; but a flow
 * stopped by a store outage and resumed an hour later would then find every deadline
 * passed and fall back without a call. So on resume, each microtask that had not finished
 * gets the time it had left when its snapshot was saved:
 *
 *   deadlineAt' = now + min(deadlineAt - savedAt, its full timeout)
 *
 * A deadline that had already passed when the snapshot was saved stays passed.
 *
 * Where it lives in a persisted snapshot (XState 5): a machine's invoked or spawned actors
 * are under `children[id].snapshot`; a promise actor's persisted snapshot is
 * `{ status, input, output?, error? }`, so a running microtask is a child whose snapshot is
 * `active` with a numeric `input.deadlineAt`. Child machines (the tool builder's feedback
 * loops, parallel fan-outs, ...) nest their own `children`, walked to any depth.
 */
export interface ResumeDeadlinesOptions {
  /**
   * The full timeout of a microtask whose input sets no `timeoutMs` (the runner's default,
   * MICROTASK_TIMEOUT_MS). Unset: the longest a microtask may take (10 minutes).
   */
  defaultTimeoutMs?: number;
}

/**
 * The persisted snapshot with the deadline of every unfinished microtask moved as if no
 * time had passed between `savedAt` (when the snapshot was saved, epoch ms: the record's
 * `updatedAt`) and `now`. Pure: the snapshot given is not changed; parts with nothing to
 * move are shared. A `savedAt` that is not a finite number leaves the snapshot as it is.
 */
export function resumeDeadlines<S>(snapshot: S, savedAt: number, now: number, options: ResumeDeadlinesOptions = {}): S {
  if (!Number.isFinite(savedAt) || !Number.isFinite(now)) return snapshot;
  const fullTimeoutOf = (input: Record<string, unknown>) =>
    isPositive(input.timeoutMs) ? input.timeoutMs : isPositive(options.defaultTimeoutMs) ? options.defaultTimeoutMs : MAX_MICROTASK_TIMEOUT_MS;

  const moveActor = (actor: unknown): unknown => {
    if (!isRecord(actor)) return actor;
    let moved: Record<string, unknown> = actor;
    const input = actor.input;
    if (actor.status === 'active' && isRecord(input) && typeof input.deadlineAt === 'number' && Number.isFinite(input.deadlineAt)) {
      const left = Math.min(input.deadlineAt - savedAt, fullTimeoutOf(input));
      moved = { ...moved, input: { ...input, deadlineAt: now + left } };
    }
    const children = actor.children;
    if (isRecord(children)) {
      let changed = false;
      const next: Record<string, unknown> = {};
      for (const [id, child] of Object.entries(children)) {
        next[id] = child;
        if (!isRecord(child)) continue;
        const inner = moveActor(child.snapshot);
        if (inner !== child.snapshot) {
          next[id] = { ...child, snapshot: inner };
          changed = true;
        }
      }
      if (changed) moved = { ...moved, children: next };
    }
    return moved;
  };
  return moveActor(snapshot) as S;
}

const isRecord = (value: unknown): value is Record<string, unknown> => typeof value === 'object' && value !== null && !Array.isArray(value);
const isPositive = (value: unknown): value is number => typeof value === 'number' && Number.isFinite(value) && value > 0;
