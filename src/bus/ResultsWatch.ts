import type { BusSubscription, KeyValueStore, KvEntry } from './Bus.js';

/** One run waiting for the result under a key. */
export interface ResultWaiter {
  /** A write of the key, seen by the watch. */
  onEntry(entry: KvEntry): void;
  /** Writes may have been missed (a reconnect, the watch opened again): read the key again. */
  onGap(): Promise<void>;
}

export interface ResultsWatchOptions {
  /**
   * How long the watch stays open once nobody waits (a flow's next microtask is usually
   * moments away: opening a watch costs a few JetStream requests). Default 60 s.
   */
  lingerMs?: number;
  /** Waiters read again at most this many at once after a gap (10,000 waiting flows: not 10,000 reads at once). */
  catchUpConcurrency?: number;
}

/**
 * One watch of the results bucket for every run of a process waiting on a result, fanned out
 * by key: waiting costs the bus nothing (no poll per run, no subscription per run), however
 * many runs wait. The watch opens with the first waiter and closes a while after the last.
 *
 * A waiter added once the watch is open sees every later write of its key, or, when the
 * bus reports that writes may have been missed, is asked to read its key again (once per
 * gap, a bounded number at a time).
 */
export class ResultsWatch {
  private readonly waiting = new Map<string, Set<ResultWaiter>>();
  private watching: Promise<BusSubscription> | undefined;
  private idle: NodeJS.Timeout | undefined;
  /** When the watch last reported a gap (the bus was in trouble); -Infinity before any. */
  lastGapAt = Number.NEGATIVE_INFINITY;
  private readonly lingerMs: number;
  private readonly catchUpConcurrency: number;

  constructor(
    private readonly kv: KeyValueStore,
    options: ResultsWatchOptions = {},
  ) {
    this.lingerMs = options.lingerMs ?? 60_000;
    this.catchUpConcurrency = options.catchUpConcurrency ?? 64;
  }

  /** How many runs wait (for the bench and tests). */
  get size(): number {
    let n = 0;
    for (const set of this.waiting.values()) n += set.size;
    return n;
  }

  /**
   * Adds `waiter` for `key` once the watch is open (opening it if needed; rejects, adding
   * nothing, when it cannot be opened). Returns the function that removes it.
   */
  async wait(key: string, waiter: ResultWaiter): Promise<() => void> {
    await this.open();
    let set = this.waiting.get(key);
    if (!set) this.waiting.set(key, (set = new Set()));
    set.add(waiter);
    this.cancelIdle();
    let removed = false;
    return () => {
      if (removed) return;
      removed = true;
      set.delete(waiter);
      if (set.size === 0 && this.waiting.get(key) === set) this.waiting.delete(key);
      if (this.waiting.size === 0) this.scheduleIdle();
    };
  }

  /** Closes the watch now (the waiters left wait for their deadlines). */
  async close(): Promise<void> {
    this.cancelIdle();
    const watching = this.watching;
    this.watching = undefined;
    await watching?.then((s) => s.unsubscribe()).catch(() => undefined);
  }

  private open(): Promise<BusSubscription> {
    this.cancelIdle();
    if (!this.watching) {
      const watching = this.kv.watchUpdates((key, entry) => this.dispatch(key, entry), { onGap: () => void this.catchUp() });
      this.watching = watching;
      // A watch that could not be opened is tried again by the next waiter.
      watching.catch(() => {
        if (this.watching === watching) this.watching = undefined;
      });
    }
    return this.watching;
  }

  private dispatch(key: string, entry: KvEntry | undefined): void {
    // Results are never deleted by a writer (they expire with the bucket's max age, silently).
    if (!entry) return;
    const set = this.waiting.get(key);
    if (!set) return;
    for (const waiter of [...set]) {
      try {
        waiter.onEntry(entry);
      } catch {
        // the waiter's own failure
      }
    }
  }

  private async catchUp(): Promise<void> {
    this.lastGapAt = Date.now();
    const waiters = [...this.waiting.values()].flatMap((set) => [...set]);
    let next = 0;
    const lane = async () => {
      while (next < waiters.length) await waiters[next++]!.onGap().catch(() => undefined);
    };
    await Promise.all(Array.from({ length: Math.min(this.catchUpConcurrency, waiters.length) }, lane));
  }

  private scheduleIdle(): void {
    this.cancelIdle();
    this.idle = setTimeout(() => {
      this.idle = undefined;
      if (this.waiting.size === 0) void this.close();
    }, this.lingerMs);
    // An open watch with nobody waiting does not keep the process alive.
    this.idle.unref();
  }

  private cancelIdle(): void {
    if (this.idle) clearTimeout(this.idle);
    this.idle = undefined;
  }
}
