import type { KeptEvent } from './contracts/waits.js';
import type { OwnerLeases } from './leases.js';
import type { Logger } from './log.js';
import type { FlowSnapshotRecord, SnapshotStore, StoredSnapshot } from './persistence/SnapshotStore.js';
import { loadForWake } from './flowSaving.js';
import { hasScheduledEvents } from './flowSleep.js';
import { sameIds, type HostedFlow, type SleepingFlow } from './hostedFlow.js';

/** setTimeout fires at once past this (about 24.8 days): a later wake is timed in laps. */
const MAX_TIMER_MS = 2_147_483_647;

/** A sleeping flow whose restore failed (the store unreachable) is tried again after this. */
const WAKE_RETRY_MS = 5_000;

/** What the sleeping of flows needs of the flow host it keeps them for. */
export interface SleepingHost {
  /** The flow this host runs awake under this id, if any. */
  awake(flowId: string): HostedFlow | undefined;
  /** Takes a flow out of those the host runs awake (it is asleep now). */
  dropAwake(flowId: string): void;
  /**
   * Builds a flow again from the record its wake read (the revision it was put to sleep
   * with), as a resume does, and starts it with the events kept for it.
   */
  rebuild(asleep: SleepingFlow, stored: StoredSnapshot, kept: readonly KeptEvent[]): HostedFlow;
  /** Keeps a flow's `finished` for a caller that asks after it left. */
  keepLeft(flowId: string, finished: Promise<FlowSnapshotRecord>): void;
  /** The version of a flow's machine this process runs; undefined when it does not define it. */
  version(pattern: string): number | undefined;
}

export interface FlowSleepingOptions {
  store: SnapshotStore;
  logger: Logger;
  /** How long a flow that only waits stays awake before it sleeps (FlowHostOptions.sleepAfterMs). */
  sleepAfterMs?: number;
  /** How long a wake's read of the store is tried again while its failure may pass (FlowHostOptions.storeRetryMs). */
  storeRetryMs?: number;
}

/**
 * A flow host's flows asleep (src/flowSleep.ts): a flow that only waits is dropped from
 * memory once everything of it is saved, kept as its record without the snapshot and a
 * timer for its earliest deadline, and restored from the store when an event, its
 * deadline or a cancel arrives. A wake that finds another revision stored lets it go.
 */
export class FlowSleeping {
  /** Flows that only wait, kept as their records (src/flowSleep.ts). */
  private readonly sleeping = new Map<string, SleepingFlow>();

  constructor(
    private readonly options: FlowSleepingOptions,
    private readonly host: SleepingHost,
    /** With several daemons on one store: this host's leases (a flow another process wrote while asleep leaves its index). */
    private readonly leases: OwnerLeases | undefined,
  ) {}

  /** How many flows are asleep here. */
  get size(): number {
    return this.sleeping.size;
  }

  /** The flows asleep here and their patterns (the ops gauges count them). */
  *asleep(): Iterable<{ flowId: string; pattern: string }> {
    for (const { flowId, record } of this.sleeping.values()) yield { flowId, pattern: record.pattern };
  }

  has(flowId: string): boolean {
    return this.sleeping.has(flowId);
  }

  get(flowId: string): SleepingFlow | undefined {
    return this.sleeping.get(flowId);
  }

  allowed(): boolean {
    return (this.options.sleepAfterMs ?? 0) < Number.POSITIVE_INFINITY;
  }

  /** Whether a flow's record alone resumes it (asleep, here, as its own owner): no snapshot needed. */
  resumableAsleep(record: FlowSnapshotRecord): boolean {
    const leases = this.leases;
    const own = !leases || (record.owner === leases.owner && record.leaseUntil === undefined);
    return own && record.sleep !== undefined && !!record.waiting?.length && this.allowed() && this.host.version(record.pattern) === record.machineVersion;
  }

  /**
   * A flow resumed asleep (a host's start): no actor is built for it until something
   * arrives. `kept`, the events kept for it meanwhile, are applied first when it wakes.
   */
  resumed(flowId: string, record: FlowSnapshotRecord, revision: number, wakeAt: number | undefined, kept: Promise<KeptEvent[]>) {
    let resolveFinished!: (record: FlowSnapshotRecord) => void;
    const finished = new Promise<FlowSnapshotRecord>((resolve) => (resolveFinished = resolve));
    // Its resume is journaled when it wakes: 100,000 flows resumed asleep write nothing more.
    this.sleep({ flowId, record: { ...record, snapshot: null }, revision, finished, resolveFinished, timer: undefined, waking: undefined, kept, resumed: true }, wakeAt);
    this.options.logger.debug({ flowId, state: record.state }, 'flow resumed asleep: it waits');
  }

  /**
   * Puts a flow to sleep once this save is the last for now: after `sleepAfterMs`, when no
   * other save was queued since and its announcements are out (`trySleep` checks the rest).
   */
  sleepSoon(hosted: HostedFlow) {
    if (!this.allowed() || !hosted.record.waiting?.length) return;
    const chain = hosted.chain;
    setTimeout(() => {
      void Promise.all([chain, hosted.announcing]).then(() => {
        if (hosted.chain === chain) this.trySleep(hosted);
      });
    }, this.options.sleepAfterMs ?? 0).unref();
  }

  /** Sleeps a flow that only waits, everything of it saved (src/flowSleep.ts); leaves any other as it is. */
  private trySleep(hosted: HostedFlow) {
    if (this.host.awake(hosted.flowId) !== hosted || hosted.ending || hosted.lost || hosted.frozen || hosted.restoring) return;
    if (hosted.writeQueued || hosted.pending.length > 0 || hosted.touch || hosted.microtasks.size > 0 || hosted.awaiting) return;
    const { record } = hosted;
    if (!record.waiting?.length) return;
    // An event applied (or refused) whose transition changed nothing is saved with the next step: not yet in the record.
    if (!sameIds(hosted.received, record.received) || !sameIds(hosted.refused, record.refused)) return;
    // Whether it only waits was worked out when its last step was saved (the record's `sleep`).
    const plan = record.sleep;
    if (!plan || hasScheduledEvents(hosted.actor)) return;
    // A deadline already passed: the live timer has fired (or is about to), and the flow
    // still waits. Restored, the timer would fire again at once, and again at every wake
    // (a flow that stays in its waiting state after `wait.timeout`): it stays awake.
    if (plan.wakeAt !== undefined && plan.wakeAt <= Date.now()) return;
    // Stopped as a shutdown stops it: not a step, nothing saved (its record is its last step).
    hosted.frozen = true;
    hosted.actor.stop();
    this.host.dropAwake(hosted.flowId);
    const { flowId, revision, finished, resolveFinished } = hosted;
    this.sleep({ flowId, record: { ...record, snapshot: null }, revision, finished, resolveFinished, timer: undefined, waking: undefined }, plan.wakeAt);
    this.options.logger.debug({ flowId, state: record.state }, 'flow asleep: it waits');
  }

  private sleep(asleep: SleepingFlow, wakeAt: number | undefined) {
    this.sleeping.set(asleep.flowId, asleep);
    if (wakeAt !== undefined) asleep.wakeAt = wakeAt;
    this.armWake(asleep);
  }

  /** Times the wake at the flow's earliest deadline (in laps past the longest timer). */
  private armWake(asleep: SleepingFlow, at = asleep.wakeAt) {
    if (asleep.timer) clearTimeout(asleep.timer);
    asleep.timer = undefined;
    if (at === undefined) return;
    const fire = () => {
      const left = at - Date.now();
      if (left > 0) {
        asleep.timer = setTimeout(fire, Math.min(left, MAX_TIMER_MS));
        asleep.timer.unref();
        return;
      }
      asleep.timer = undefined;
      this.wake(asleep.flowId).catch((e: unknown) => this.options.logger.error({ flowId: asleep.flowId, err: e }, 'could not wake a flow at its deadline; trying again'));
    };
    fire();
  }

  /**
   * Wakes a flow asleep here: restores it from its stored record, as it was put to sleep.
   * Undefined when it is not here any more: another process wrote it meanwhile (a cancel
   * from the CLI, another host that took it over), or this host stopped.
   */
  wake(flowId: string): Promise<HostedFlow | undefined> {
    const asleep = this.sleeping.get(flowId);
    if (!asleep) return Promise.resolve(this.host.awake(flowId));
    asleep.waking ??= this.restore(asleep);
    return asleep.waking;
  }

  private async restore(asleep: SleepingFlow): Promise<HostedFlow | undefined> {
    const { flowId } = asleep;
    if (asleep.timer) clearTimeout(asleep.timer);
    asleep.timer = undefined;
    let stored;
    let kept: KeptEvent[];
    try {
      kept = (await asleep.kept) ?? [];
      // Retried while the failure may pass; given up when this host lets the flow go (a stop, a lapse).
      stored = await loadForWake(this.options.store, flowId, { retryMs: this.options.storeRetryMs, logger: this.options.logger, givenUp: () => this.sleeping.get(flowId) !== asleep });
    } catch (e) {
      // The store unreachable: still asleep, woken again by the next event, or soon when it has a deadline.
      asleep.waking = undefined;
      if (this.sleeping.get(flowId) === asleep && asleep.wakeAt !== undefined) this.armWake(asleep, Math.max(asleep.wakeAt, Date.now() + WAKE_RETRY_MS));
      throw e;
    }
    // This host stopped meanwhile (or a lapse let its flows go).
    if (this.sleeping.get(flowId) !== asleep) return this.host.awake(flowId);
    this.sleeping.delete(flowId);
    delete asleep.kept;
    if (!stored || stored.revision !== asleep.revision) {
      // Written by another process while it slept here: ended there (a cancel), or another host holds it now.
      const ended = stored && stored.record.status !== 'running';
      this.options.logger.info({ flowId, status: stored?.record.status }, ended ? 'flow ended elsewhere (cancelled) while asleep here' : 'flow taken over by another owner while asleep here');
      if (this.leases) void this.leases.release(flowId);
      this.host.keepLeft(flowId, asleep.finished);
      asleep.resolveFinished(stored?.record ?? asleep.record);
      return undefined;
    }
    const hosted = this.host.rebuild(asleep, stored, kept);
    // Woken for nothing it accepts (a duplicate, a refused event): asleep again once that is saved.
    this.sleepSoon(hosted);
    return hosted;
  }

  /**
   * Lets go of the flows asleep here: nothing of theirs is unsaved (their records stay
   * `running`, for a resume or another host). Resolves with the wakes under way, whose
   * flows are awake here once they settle.
   */
  dropAll(): Array<Promise<unknown>> {
    const waking: Array<Promise<unknown>> = [];
    for (const asleep of this.sleeping.values()) {
      if (asleep.timer) clearTimeout(asleep.timer);
      if (asleep.waking) waking.push(asleep.waking);
    }
    this.sleeping.clear();
    return waking;
  }
}
