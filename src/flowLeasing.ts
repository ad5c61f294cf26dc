import type { Logger } from './log.js';
import { isFresh, MemoryLeaseBoard, OwnerLeases, type LeaseBoard } from './leases.js';
import { isStoreUnavailable, StoreUnavailableError } from './persistence/StoreUnavailableError.js';
import { mapLimit, type SnapshotStore } from './persistence/SnapshotStore.js';

/** How old the heartbeats read once for a scan of many flows (resumeAll, a takeover) may be. */
export const SCAN_BEATS_MAX_AGE_MS = 1_000;

/** Flows resumed (or claimed) at once. */
export const RESUME_CONCURRENCY = 32;

export type ResumeOutcome = 'resumed' | 'running' | 'finished' | 'owned';

/** What the lease keeping needs of the flow host it keeps them for. */
export interface LeasedHost {
  /** Whether the host runs the flow (awake or asleep). */
  hosts(flowId: string): boolean;
  /** How many flows it runs. */
  count(): number;
  /** Claims a flow as `resume` does, judging other owners by heartbeats read at most `beatsMaxAgeMs` ago. */
  resumeOne(flowId: string, beatsMaxAgeMs: number): Promise<ResumeOutcome>;
  /** Stops every flow it runs without ending it (their records stay `running`). */
  stopAll(): Promise<void>;
}

/**
 * A flow host's side of the leases (src/leases.ts): one heartbeat per host whatever the
 * number of flows, the ownership index, the takeover of flows whose owner's heartbeat went
 * stale, and a lapse (this host's own heartbeat not landing: it stops its flows before
 * another may take them, and claims them again once it lands). Fencing is not here: it is
 * the snapshot's compare-and-set on every save.
 */
export class HostLeasing {
  readonly leases: OwnerLeases;
  private timer: NodeJS.Timeout | undefined;
  /** Flows being claimed here (a resume between its read and its compare-and-set). */
  readonly claiming = new Set<string>();
  /** The takeover scan, or the claims after a lapse, running. */
  private ticking: Promise<void> | undefined;
  /** `startScanning` was called: each tick also takes over the flows of stale owners. */
  private scanning = false;
  /** Set when this host stopped its flows because its heartbeat stopped landing: they are claimed again once it lands. */
  private lapse: Promise<unknown> | undefined;
  /** Flows held under a lease an older daemon wrote in the record (`leaseUntil`): tried again once it passes. */
  private readonly legacy = new Map<string, number>();

  constructor(
    lease: { owner: string; durationMs: number; board?: LeaseBoard },
    store: SnapshotStore,
    private readonly host: LeasedHost,
    private readonly logger: Logger,
  ) {
    this.leases = new OwnerLeases(lease.board ?? MemoryLeaseBoard.for(store), lease.owner, lease.durationMs, logger);
  }

  get owner(): string {
    return this.leases.owner;
  }

  /** Runs a claim of a flow, marked as under way (a second claim of it meanwhile finds it `running`). */
  async claim(flowId: string, claim: () => Promise<ResumeOutcome>): Promise<ResumeOutcome> {
    this.claiming.add(flowId);
    try {
      await this.ready();
      return await claim();
    } finally {
      this.claiming.delete(flowId);
    }
  }

  /** An older daemon holds the flow with a lease in its record until `until`: looked at again once it passed. */
  heldByOlder(flowId: string, until: number | undefined): void {
    if (until !== undefined && until > Date.now()) this.legacy.set(flowId, until);
    else this.legacy.delete(flowId);
  }

  /**
   * A heartbeat of this host has landed, and lately (else it may not start or claim a
   * flow); starts the heartbeat at the first flow or claim.
   */
  async ready(): Promise<void> {
    await this.leases.ready();
    this.startHeartbeat();
    if (this.leases.lapsed()) throw new StoreUnavailableError('the lease heartbeat has not landed for most of the lease (the store is unreachable): no flow is started or claimed');
  }

  /** Takes over, on every tick of the heartbeat, the flows of owners whose heartbeat went stale; until `stop`. */
  startScanning(): void {
    this.scanning = true;
    this.startHeartbeat();
  }

  /**
   * Takes over the flows of the owners whose heartbeat went stale (a daemon that died or
   * stopped): reads the heartbeats (a key per daemon), then a stale owner's index (key
   * names), and claims each of its flows as `resume` does (compare-and-set). Its index
   * entries go whatever the outcome (taken here, by another host, or ended), and its
   * heartbeat once it holds nothing.
   */
  async takeOverExpired(): Promise<string[]> {
    const leases = this.leases;
    const taken: string[] = [];
    const now = Date.now();
    for (const beat of (await leases.heartbeats()).values()) {
      if (beat.owner === leases.owner || isFresh(beat, now)) continue;
      let left = 0;
      await mapLimit(await leases.held(beat.owner), RESUME_CONCURRENCY, async (flowId) => {
        if (this.host.hosts(flowId) || this.claiming.has(flowId)) return leases.release(flowId, beat.owner);
        try {
          if ((await this.host.resumeOne(flowId, SCAN_BEATS_MAX_AGE_MS)) === 'resumed') {
            taken.push(flowId);
            this.logger.warn({ flowId, from: beat.owner }, beat.stopped ? 'took over a flow of a daemon that stopped' : 'took over a flow whose owner stopped renewing its lease');
          }
          await leases.release(flowId, beat.owner);
        } catch (e) {
          this.logger.error({ flowId, err: e }, 'could not take over a flow');
          if (isStoreUnavailable(e)) left++;
          else await leases.release(flowId, beat.owner);
        }
      });
      // Long gone (two leases): a daemon back from a partition writes its heartbeat again within a third of one.
      if (left === 0 && now - beat.at > 2 * beat.durationMs) {
        await leases.forget(beat.owner).catch((e: unknown) => this.logger.warn({ owner: beat.owner, err: e }, 'could not remove a stale heartbeat'));
      }
    }
    // Flows an older daemon holds with a lease in their record: tried again once it passed.
    for (const [flowId, until] of this.legacy) {
      if (until > now) continue;
      this.legacy.delete(flowId);
      if ((await this.host.resumeOne(flowId, 0).catch(() => undefined)) === 'resumed') taken.push(flowId);
    }
    return taken;
  }

  /**
   * The heartbeat: written every third of the lease, one write per host whatever the
   * number of flows; until `stop`. A host whose heartbeat has not landed for three
   * quarters of the lease stops running its flows (another host may take them over once
   * the whole lease has passed) and claims them again once it lands.
   */
  private startHeartbeat() {
    if (this.timer) return;
    const leases = this.leases;
    let lastScan = 0;
    // Checked twice per beat: the heartbeat, the lapse check and the scan each keep their
    // own pace, so a slow heartbeat (a busy or reconnecting bus) or a long takeover does
    // not hold the others up.
    this.timer = setInterval(() => {
      const now = Date.now();
      if (leases.lapsed(now) && !this.lapse) {
        const flows = this.host.count();
        if (flows > 0) this.logger.error({ flows }, 'the lease heartbeat has not landed for most of the lease: stopping the flows here, to claim them again once it lands');
        this.lapse = this.host.stopAll();
      }
      if (leases.beatDue(now)) {
        void leases.beat().then((landed) => {
          if (landed && this.lapse && !this.ticking) this.ticking = this.reclaim().finally(() => (this.ticking = undefined));
        });
      }
      if (this.scanning && !this.ticking && now - lastScan >= leases.tickMs) {
        lastScan = now;
        this.ticking = this.takeOverExpired()
          .then(() => undefined)
          .catch((e: unknown) => this.logger.error({ err: e }, 'lease scan failed'))
          .finally(() => (this.ticking = undefined));
      }
    }, Math.max(25, Math.floor(leases.tickMs / 2)));
    this.timer.unref();
  }

  /** After a lapse: the flows still in this host's index are claimed again (those another host took meanwhile are dropped from it). */
  private async reclaim(): Promise<void> {
    const leases = this.leases;
    await this.lapse;
    const held = await leases.held();
    this.lapse = undefined;
    await mapLimit(held, RESUME_CONCURRENCY, async (flowId) => {
      try {
        const outcome = await this.host.resumeOne(flowId, 0);
        if (outcome === 'owned' || outcome === 'finished') await leases.release(flowId);
      } catch (e) {
        this.logger.error({ flowId, err: e }, 'could not claim a flow again after the heartbeat came back');
      }
    });
  }

  /**
   * Stops the heartbeat and the scans, then (once `stopFlows` stopped the host's flows)
   * gives the leases up with one write: a restart, or another daemon, resumes these flows
   * at once instead of waiting for the lease to run out (and the microtasks' deadlines
   * with it). They stay in this host's index, where the other finds them.
   */
  async stop(stopFlows: () => Promise<void>): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    this.scanning = false;
    // A scan claiming flows now would host them after the stop; a heartbeat on its way would land after the one that gives the leases up.
    await this.ticking;
    await this.leases.settled();
    await stopFlows();
    await this.lapse;
    if (this.leases.started) await this.leases.retire().catch((e: unknown) => this.logger.warn({ err: e }, 'could not release the leases'));
  }
}
