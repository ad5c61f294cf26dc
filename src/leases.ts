import type { KeyValueStore } from './bus/Bus.js';
import type { Logger } from './log.js';

/**
 * Leases of daemons sharing one snapshot store, renewed per daemon rather than per flow.
 * Each daemon writes a heartbeat every third of its lease; a flow's record names its
 * owner, and the flow is that owner's while its heartbeat is fresh. Which flows an owner
 * holds is kept in an index (one key per flow, written on claim, deleted when the flow
 * ends or leaves), so taking over a dead daemon's flows reads a few heartbeats and that
 * daemon's index, never every flow. A claim is still a compare-and-set on the flow's
 * snapshot revision: a daemon that lost a flow finds its next save refused.
 *
 * 10,000 flows waiting for a person cost one heartbeat write and one read of the
 * heartbeats every lease/3 (before: every record rewritten every lease/3, and every
 * running record listed and read on every tick).
 */

/** A daemon's word that it is alive: `at` (its clock) plus `durationMs` is when its flows become free. */
export interface Heartbeat {
  owner: string;
  at: number;
  durationMs: number;
  /** Written by a daemon that stopped cleanly: its flows are free at once. */
  stopped?: boolean;
}

/** Where the heartbeats and the ownership index are kept (the port; NATS KV in a daemon). */
export interface LeaseBoard {
  beat(heartbeat: Heartbeat): Promise<void>;
  /** Every owner's last heartbeat (a few keys: one per daemon that ran flows). */
  heartbeats(): Promise<Heartbeat[]>;
  /** Deletes an owner's heartbeat (once nothing is left in its index). */
  forget(owner: string): Promise<void>;
  hold(owner: string, flowId: string): Promise<void>;
  release(owner: string, flowId: string): Promise<void>;
  /** The flows in an owner's index (key names only). */
  held(owner: string): Promise<string[]>;
}

export const isFresh = (beat: Heartbeat | undefined, now: number) => beat !== undefined && !beat.stopped && beat.at + beat.durationMs > now;

// An owner may hold `.`, `:` and `@` (MICROTASK_DAEMON_ID, host:pid:random), which KV keys do not.
const ownerToken = (owner: string) => Buffer.from(owner, 'utf8').toString('base64url');

/**
 * The board in a KV bucket: `hb.<owner>` (JSON heartbeat) and `own.<owner>.<flowId>` (empty).
 * The bucket has no max age (an index key lives as long as its flow waits, days); it stays
 * bounded because a flow's key goes when it ends or is taken over, and a dead daemon's
 * heartbeat goes once its index is empty.
 */
export class KvLeaseBoard implements LeaseBoard {
  constructor(private readonly kv: KeyValueStore) {}

  async beat(heartbeat: Heartbeat): Promise<void> {
    await this.kv.put(`hb.${ownerToken(heartbeat.owner)}`, JSON.stringify(heartbeat));
  }

  async heartbeats(): Promise<Heartbeat[]> {
    const keys = await this.kv.keys('hb.*');
    const entries = await Promise.all(keys.map((key) => this.kv.get(key)));
    const beats: Heartbeat[] = [];
    for (const entry of entries) {
      try {
        if (entry) beats.push(entry.json<Heartbeat>());
      } catch {
        // Not a heartbeat of this project: ignored.
      }
    }
    return beats;
  }

  async forget(owner: string): Promise<void> {
    await this.kv.delete(`hb.${ownerToken(owner)}`);
  }

  async hold(owner: string, flowId: string): Promise<void> {
    await this.kv.put(`own.${ownerToken(owner)}.${flowId}`, '');
  }

  async release(owner: string, flowId: string): Promise<void> {
    await this.kv.delete(`own.${ownerToken(owner)}.${flowId}`);
  }

  async held(owner: string): Promise<string[]> {
    const prefix = `own.${ownerToken(owner)}.`;
    return (await this.kv.keys(`${prefix}>`)).map((key) => key.slice(prefix.length));
  }
}

/** The board of hosts in one process (tests, the library): a map. */
export class MemoryLeaseBoard implements LeaseBoard {
  private static readonly shared = new WeakMap<object, MemoryLeaseBoard>();
  /** The board of the hosts given this store object in this process. */
  static for(store: object): MemoryLeaseBoard {
    let board = MemoryLeaseBoard.shared.get(store);
    if (!board) MemoryLeaseBoard.shared.set(store, (board = new MemoryLeaseBoard()));
    return board;
  }

  private readonly beats = new Map<string, Heartbeat>();
  private readonly index = new Map<string, Set<string>>();

  async beat(heartbeat: Heartbeat) {
    this.beats.set(heartbeat.owner, { ...heartbeat });
  }
  async heartbeats() {
    return [...this.beats.values()].map((b) => ({ ...b }));
  }
  async forget(owner: string) {
    this.beats.delete(owner);
  }
  async hold(owner: string, flowId: string) {
    let flows = this.index.get(owner);
    if (!flows) this.index.set(owner, (flows = new Set()));
    flows.add(flowId);
  }
  async release(owner: string, flowId: string) {
    this.index.get(owner)?.delete(flowId);
  }
  async held(owner: string) {
    return [...(this.index.get(owner) ?? [])];
  }
}

/**
 * One host's side of the leases: its heartbeat (and whether it still lands), its index
 * entries, and what it knows of the other owners' heartbeats.
 */
export class OwnerLeases {
  /** When the last heartbeat that landed was sent (0: none yet). */
  private lastLandedAt = 0;
  private first: Promise<void> | undefined;
  /** The heartbeat on its way, if one is. */
  private beating: Promise<void> | undefined;
  private lastSentAt = 0;
  private cache: { readAt: number; beats: Map<string, Heartbeat> } | undefined;

  constructor(
    private readonly board: LeaseBoard,
    readonly owner: string,
    readonly durationMs: number,
    private readonly logger: Logger,
  ) {}

  /** How often the heartbeat is written (and other owners' checked). */
  get tickMs() {
    return Math.max(50, Math.floor(this.durationMs / 3));
  }

  /** Resolves once a heartbeat of this host landed: only then may it claim or start flows. */
  ready(): Promise<void> {
    this.first ??= this.beatOnce().catch((e: unknown) => {
      this.first = undefined;
      throw e;
    });
    return this.first;
  }

  /** A third of the lease since the last heartbeat was sent, and none is on its way. */
  beatDue(now = Date.now()): boolean {
    return !this.beating && now - this.lastSentAt >= this.tickMs;
  }

  /** Writes the heartbeat; false when it did not land (or one is still on its way). */
  async beat(): Promise<boolean> {
    if (this.beating) return false;
    try {
      await this.beatOnce();
      return true;
    } catch (e) {
      this.logger.warn({ owner: this.owner, err: e }, 'could not write the lease heartbeat');
      return false;
    }
  }

  /** Resolves once no heartbeat is on its way. */
  async settled(): Promise<void> {
    await this.beating?.catch(() => undefined);
  }

  private async beatOnce() {
    const at = Date.now();
    this.lastSentAt = at;
    const beating = this.board.beat({ owner: this.owner, at, durationMs: this.durationMs });
    this.beating = beating;
    try {
      await beating;
      this.lastLandedAt = Math.max(this.lastLandedAt, at);
    } finally {
      if (this.beating === beating) this.beating = undefined;
    }
  }

  /**
   * True once no heartbeat has landed for three quarters of the lease: the others take
   * this host's flows over when the whole lease has passed since the last one, so it stops
   * running them first (two hosts never run one flow). Checked every sixth of the lease.
   */
  lapsed(now = Date.now()): boolean {
    return this.lastLandedAt > 0 && now - this.lastLandedAt >= (this.durationMs * 3) / 4;
  }

  /** A heartbeat of this host has landed. */
  get started() {
    return this.lastLandedAt > 0;
  }

  /** Says this host stopped: its flows are free at once (their records stay, to be resumed). */
  async retire(): Promise<void> {
    await this.board.beat({ owner: this.owner, at: Date.now(), durationMs: this.durationMs, stopped: true });
  }

  /** The other owners' heartbeats, read at most every `maxAgeMs` (a scan of many flows reads them once). */
  async heartbeats(maxAgeMs = 0): Promise<Map<string, Heartbeat>> {
    const now = Date.now();
    if (this.cache && now - this.cache.readAt <= maxAgeMs) return this.cache.beats;
    const beats = new Map((await this.board.heartbeats()).map((b) => [b.owner, b]));
    this.cache = { readAt: now, beats };
    return beats;
  }

  /**
   * Whether `owner` still holds a flow: its heartbeat is fresh, or the record carries a
   * lease written by an older daemon (`leaseUntil`, renewed per flow) that has not passed.
   */
  async holds(owner: string, leaseUntil: string | undefined, beatsMaxAgeMs: number, now = Date.now()): Promise<boolean> {
    if (leaseUntil && Date.parse(leaseUntil) > now) return true;
    // At most a sixth of the lease old: resuming 10,000 flows reads the heartbeats a few times, not 10,000.
    const beats = await this.heartbeats(Math.min(beatsMaxAgeMs, this.durationMs / 6));
    return isFresh(beats.get(owner), now);
  }

  hold(flowId: string, owner = this.owner) {
    return this.board.hold(owner, flowId);
  }

  release(flowId: string, owner = this.owner): Promise<void> {
    return this.board.release(owner, flowId).catch((e: unknown) => {
      // A key left behind names a flow its owner no longer runs: a takeover finds it so and drops it.
      this.logger.warn({ flowId, owner, err: e }, 'could not remove a flow from the lease index');
    });
  }

  held(owner = this.owner) {
    return this.board.held(owner);
  }

  forget(owner: string) {
    return this.board.forget(owner);
  }
}
