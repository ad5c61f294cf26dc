import { NatsBus } from '../bus/NatsBus.js';
import type { Bus, KeyValueStore } from '../bus/Bus.js';
import { subjects } from '../bus/subjects.js';
import type { Config } from '../config.js';

/** How long one check may take before it counts as failed (a probe every few seconds must not pile up). */
const CHECK_TIMEOUT_MS = 2_000;
/** The key the probe writes in the results bucket (one for every process: only that a write succeeds matters). */
const PROBE_KEY = 'health-probe';

export interface CheckResult {
  name: string;
  ok: boolean;
  /** Why not, when not ok: one line. */
  reason?: string;
}

export interface Readiness {
  ready: boolean;
  checks: CheckResult[];
}

/**
 * Whether this process should get work (`/readyz`): connected to NATS, its stores
 * writable, not draining. Being alive (`/healthz`) asks nothing: a process that answers
 * HTTP is alive; a platform restarts one that does not. A not-ready one is left alone and
 * sent no traffic: NATS may come back, the disk may be freed, a drain ends in an exit.
 */
export class Health {
  private draining = false;
  private readonly checks = new Map<string, () => Promise<void>>();
  private readonly cleanups: Array<() => Promise<unknown>> = [];

  /** Adds a check: it resolves when all is well, rejects (with a one-line message) when not. */
  add(name: string, check: () => Promise<void>): this {
    this.checks.set(name, check);
    return this;
  }

  /** From now on not ready: the process is stopping and takes no new work. */
  drain(): void {
    this.draining = true;
  }

  async readiness(): Promise<Readiness> {
    const results: CheckResult[] = [this.draining ? { name: 'draining', ok: false, reason: 'the process is stopping' } : { name: 'draining', ok: true }];
    results.push(
      ...(await Promise.all(
        [...this.checks].map(async ([name, check]): Promise<CheckResult> => {
          try {
            await withTimeout(check(), CHECK_TIMEOUT_MS);
            return { name, ok: true };
          } catch (e) {
            return { name, ok: false, reason: (e instanceof Error ? e.message : String(e)).split('\n')[0]! };
          }
        }),
      )),
    );
    return { ready: results.every((r) => r.ok), checks: results };
  }

  /** Runs `cleanup` on close (a database handle the checks opened). */
  onClose(cleanup: () => Promise<unknown>): void {
    this.cleanups.push(cleanup);
  }

  async close(): Promise<void> {
    for (const c of this.cleanups.splice(0).reverse()) await c().catch(() => undefined);
  }
}

/**
 * The checks of a daemon or a worker (both on NATS): a round trip to the server, and a
 * write to the results bucket (the store every daemon and worker writes; a full JetStream
 * store refuses it).
 */
export async function serviceHealth(bus: Bus, config: Config): Promise<Health> {
  const health = new Health();
  if (!(bus instanceof NatsBus)) throw new Error(`a daemon's or a worker's health is checked on NATS, not on a ${bus.transport} bus`);
  const nc = bus.connection;
  health.add('nats', async () => {
    if (nc.isClosed()) throw new Error('the NATS connection is closed');
    try {
      await nc.rtt();
    } catch (e) {
      throw new Error(`NATS at ${bus.server()} does not answer: ${(e as Error).message}`);
    }
  });
  let results: KeyValueStore | undefined;
  health.add('store', async () => {
    results ??= await bus.keyValue(subjects(config.MICROTASK_SUBJECT_PREFIX).resultsBucket);
    await results.put(PROBE_KEY, new Date().toISOString());
  });
  return health;
}

function withTimeout<T>(promise: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms)));
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}
