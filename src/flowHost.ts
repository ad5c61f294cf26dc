import { randomUUID } from 'node:crypto';
import { createActor, type AnyActorRef, type AnyStateMachine, type InspectionEvent, type Snapshot } from 'xstate';
import { errorInfo } from './machines/common.js';
import {
  CorruptSnapshotError,
  mapLimit,
  SnapshotConflictError,
  type FlowSnapshotRecord,
  type FlowStatus,
  type FlowStep,
  type StoredSnapshot,
} from './persistence/SnapshotStore.js';
import { isStoreUnavailable, StoreUnavailableError } from './persistence/StoreUnavailableError.js';
import { resumeDeadlines } from './resumeDeadlines.js';
import { EventRefusedError, matchWait, publicWaits, waitsOf, type FlowWait, type LiveWait } from './flowWaits.js';
import { CANCEL_NOTICE, type KeptEvent } from './contracts/waits.js';
import { scrubSecrets } from './secrets.js';
import { isFlowStop, type FlowStopError } from './contracts/flowStop.js';
import type { OwnerLeases } from './leases.js';
import { FlowJournaling } from './flowJournaling.js';
import { HostLeasing, RESUME_CONCURRENCY, SCAN_BEATS_MAX_AGE_MS } from './flowLeasing.js';
import { sleepPlan } from './flowSleep.js';
import { FlowSleeping } from './flowSleeping.js';
import { actorPath, hostedFlow, remember, type Ending, type HostedFlow, type PendingStep, type SleepingFlow } from './hostedFlow.js';
import { saveStep, withoutLeaseUntil } from './flowSaving.js';
import { depthExceeds, MAX_JSON_DEPTH } from './jsonInput.js';
import type { FlowHostOptions } from './flowHostOptions.js';

export type { FlowHostOptions };
export type { KeptEvent };

/** What `resumeAll` read for a flow in one pass, so its resume reads nothing again. */
interface ReadForResume {
  stored?: StoredSnapshot;
  kept?: KeptEvent[];
}

// Eight random hex digits from a v4 UUID (all random there): Node draws UUIDs from a
// buffer it refills every 128, where randomBytes(4) is a system call per flow (5% of a
// flow's CPU at 64 in flight).
export const newFlowId = (pattern: string) => `${pattern}-${Date.now().toString(36)}-${randomUUID().slice(0, 8)}`;

/** The events of a non-machine actor whose snapshot its parent's report holds (see `host`). */
const MOVES_WITH_PARENT = new Set(['xstate.init', 'xstate.promise.resolve', 'xstate.promise.reject']);
const isMachineRef = (ref: unknown) => typeof (ref as { logic?: { id?: unknown } }).logic?.id === 'string';

const lifecycleStatus = (output: unknown): Exclude<FlowStatus, 'running'> =>
  (output as { status?: string } | undefined)?.status === 'failed' ? 'failed' : 'done';

/**
 * Runs flows durably: a flow's snapshot (with its children's) is saved after every
 * transition, before the transition is announced; saves of one flow are serialized; a
 * flow restored from its last snapshot carries on where it stood (a microtask that was in
 * flight runs again with the same idempotency key, so a stored result costs nothing).
 */
export class FlowHost {
  private readonly flows = new Map<string, HostedFlow>();
  /** Flows that only wait, kept as their records (src/flowSleeping.ts). */
  private readonly sleeping: FlowSleeping;
  private readonly left = new Map<string, Promise<FlowSnapshotRecord>>();
  /** Each flow's journal, and the microtasks it has in flight (src/flowJournaling.ts). */
  private readonly journaling: FlowJournaling;
  /** With several daemons on one store: the heartbeat, the ownership index, takeovers (src/flowLeasing.ts). */
  private readonly leasing: HostLeasing | undefined;

  constructor(private readonly options: FlowHostOptions) {
    this.journaling = new FlowJournaling(options.journal, (hosted) => this.park(hosted));
    const lease = options.lease;
    if (lease) {
      this.leasing = new HostLeasing(
        lease,
        options.store,
        {
          hosts: (flowId) => this.hosts(flowId),
          count: () => this.flows.size + this.sleeping.size,
          resumeOne: (flowId, beatsMaxAgeMs) => this.resumeOne(flowId, beatsMaxAgeMs),
          stopAll: () => this.stopAll(),
        },
        options.logger,
      );
    }
    const { store, logger, sleepAfterMs, storeRetryMs } = options;
    this.sleeping = new FlowSleeping(
      { store, logger, ...(sleepAfterMs !== undefined ? { sleepAfterMs } : {}), ...(storeRetryMs !== undefined ? { storeRetryMs } : {}) },
      {
        awake: (flowId) => this.flows.get(flowId),
        dropAwake: (flowId) => this.flows.delete(flowId),
        rebuild: (asleep, stored, kept) => this.rebuild(asleep, stored, kept),
        keepLeft: (flowId, finished) => this.keepLeft(flowId, finished),
        version: (pattern) => options.flows.catalog.version(pattern),
      },
      this.leasing?.leases,
    );
  }

  private get leases(): OwnerLeases | undefined {
    return this.leasing?.leases;
  }

  /** Starts a flow; resolves once its first snapshot is saved. */
  async start(pattern: string, input: Record<string, unknown>, meta: { flowId?: string; requestId?: string } = {}): Promise<string> {
    const flowId = meta.flowId ?? newFlowId(pattern);
    const machine = this.options.flows.catalog.machineOf(pattern);
    const flowInput = {
      ...input,
      key: (input.key as string | undefined) ?? flowId,
      ...(this.options.flows.catalog.definition(pattern)?.prepare?.(input, { outRoot: this.options.outRoot }) ?? {}),
    };
    const hosted = this.host(flowId, pattern, machine, { input: flowInput }, undefined, meta.requestId);
    // The first save is the first step: a flow that ends in its first microsteps has one to travel to.
    const { machineId, state, snapshot } = hosted.record;
    const json = JSON.stringify(snapshot);
    const first: FlowStep = { step: 1, at: hosted.record.updatedAt, actor: 'root', machine: machineId, state, event: 'xstate.init', rootState: state, snapshotJson: json };
    hosted.steps = 1;
    hosted.lastStepAt = first.at;
    hosted.lastCaptured = json;
    // A flow whose first state waits (a user's machine) says so from its first save.
    const waiting = publicWaits(waitsOf(hosted.actor));
    // The root's start is announced with seq 1 once the first step is durable: saved with it,
    // not in a save of its own when the root reports it (a second save and fsync per flow).
    hosted.seq = 1;
    hosted.startAnnounced = true;
    const sleep = waiting.length ? sleepPlan(snapshot) : undefined;
    hosted.record = { ...hosted.record, steps: 1, seq: 1, ...(waiting.length ? { waiting } : {}), ...(sleep ? { sleep } : {}) };
    // As in saveBatch: with a store that keeps no steps, the journal has the first step
    // before the save is acknowledged; otherwise after.
    const keeps = this.options.store.keepsSteps === true;
    const journalStart = () => {
      this.journaling.append(hosted, { kind: 'flow', phase: 'started', pattern, status: 'running', input: flowInput });
      return this.journaling.step(hosted, first, keeps);
    };
    try {
      // In the owner's index before the record names it: a flow this host dies holding is found.
      await this.leaseReady();
      await this.leases?.hold(flowId);
    } catch (e) {
      this.flows.delete(flowId);
      throw e;
    }
    const journaled = keeps ? undefined : journalStart();
    try {
      hosted.revision = await this.saveRecord(hosted, hosted.record, null, [first]);
    } catch (e) {
      this.flows.delete(flowId);
      if (this.leases) await this.leases.release(flowId);
      throw e;
    }
    if (keeps) journalStart();
    else if (journaled) this.gateSends(hosted, [journaled]);
    if (waiting.length) this.options.onWaiting?.(flowId, waiting);
    hosted.pending.push({ step: first, snapshot: undefined, seq: 1, announceOnly: true, seqSaved: true });
    this.queueWrite(hosted);
    hosted.actor.start();
    return flowId;
  }

  /**
   * Resumes a flow from its last snapshot. `finished` when it had already ended,
   * `running` when this host runs it already, `owned` when another host holds a live lease
   * on it (or claimed it first); rejects with a clear error when it is
   * unknown, corrupt (moved aside) or of an incompatible machine version (marked failed).
   */
  async resume(flowId: string): Promise<'resumed' | 'running' | 'finished' | 'owned'> {
    return this.resumeOne(flowId, 0);
  }

  /** `resume`, judging other owners by heartbeats read at most `beatsMaxAgeMs` ago (a scan of many flows reads them once). */
  private async resumeOne(flowId: string, beatsMaxAgeMs: number, read?: ReadForResume): Promise<'resumed' | 'running' | 'finished' | 'owned'> {
    if (this.hosts(flowId) || this.leasing?.claiming.has(flowId)) return 'running';
    if (!this.leasing) return this.resumeClaimed(flowId, beatsMaxAgeMs, read);
    return this.leasing.claim(flowId, () => this.resumeClaimed(flowId, beatsMaxAgeMs, read));
  }

  private async resumeClaimed(flowId: string, beatsMaxAgeMs: number, read?: ReadForResume): Promise<'resumed' | 'running' | 'finished' | 'owned'> {
    let stored;
    try {
      stored = read?.stored ?? (await this.options.store.load(flowId));
    } catch (e) {
      if (e instanceof CorruptSnapshotError) {
        await this.options.store.moveAside(flowId, e.reason);
        this.options.logger.error({ flowId, reason: e.reason }, 'corrupt snapshot moved aside; the flow cannot be resumed');
      }
      throw e;
    }
    if (!stored) throw new FlowHostError('FLOW_NOT_FOUND', `no flow ${flowId} in the snapshot store`);
    // Read without its snapshot because it sleeps: enough to resume it asleep, as its own;
    // anything else (a claim from another owner, another version, flows kept awake) reads it whole.
    if (stored.snapshotOmitted && !this.sleeping.resumableAsleep(stored.record)) {
      stored = await this.options.store.load(flowId);
      if (!stored) throw new FlowHostError('FLOW_NOT_FOUND', `no flow ${flowId} in the snapshot store`);
    }
    let { record, revision } = stored;
    if (record.status !== 'running') return 'finished';
    const leases = this.leases;
    if (leases && record.owner && record.owner !== leases.owner && (await leases.holds(record.owner, record.leaseUntil, beatsMaxAgeMs))) {
      // An older daemon's lease (renewed in the record, in no index): looked at again once it passes.
      this.leasing?.heldByOlder(flowId, record.leaseUntil ? Date.parse(record.leaseUntil) : undefined);
      return 'owned';
    }
    this.leasing?.heldByOlder(flowId, undefined);
    const pattern = record.pattern;
    const version = this.options.flows.catalog.version(pattern);
    // A flow this process has no definition of (a user's module not loaded here) is left
    // as it is, for a process that has one: not failed.
    if (version === undefined) {
      throw new FlowHostError('FLOW_NOT_DEFINED', `flow ${flowId} is a "${pattern}" flow, which this process does not define: start it with the module that does (--flows)`);
    }
    if (record.machineVersion !== version) {
      const message = `its snapshot is of ${record.machineId} version ${record.machineVersion}; this build runs version ${version}`;
      await this.options.store.save(
        { ...record, status: 'failed', updatedAt: new Date().toISOString(), error: { code: 'INCOMPATIBLE_SNAPSHOT', message } },
        revision,
      );
      throw new FlowHostError('INCOMPATIBLE_SNAPSHOT', `flow ${flowId} cannot be resumed: ${message}`);
    }
    // No microtask's clock ran while no process ran the flow (a crash, a store outage):
    // each goes on with the time it had left at the last save.
    const now = Date.now();
    const snapshot = resumeDeadlines(record.snapshot, Date.parse(record.updatedAt), now, { defaultTimeoutMs: this.options.defaultTimeoutMs });
    if (leases) {
      // Claim it first (compare-and-set): of two hosts taking it over, one wins, the other
      // leaves it. The claim saves the moved deadlines too (as of now), so starting the
      // restored actor finds nothing new to save. In this owner's index first: a host that
      // dies right after the claim is found holding it. The lease is the heartbeat's now:
      // an older daemon's `leaseUntil` goes.
      // Its own already (a restart under the same MICROTASK_DAEMON_ID): the index has it
      // from the first claim, written again alongside, not before (one round trip per flow
      // less when 10,000 resume).
      const mine = record.owner === leases.owner;
      // Its own, with nothing to move (no microtask was in flight: a flow that waits) and no
      // older lease to drop: the record is already the claim, and a save would only cost a
      // write per flow (100,000 waiting flows resumed). Fencing holds without it: a host
      // that claimed the flow meanwhile wrote a new revision, which the next save (or a
      // sleeping flow's wake) finds.
      // Nor is the index written again: its own flow is in it from its first claim.
      if (mine && snapshot === record.snapshot && record.leaseUntil === undefined) {
        // nothing to write
      } else {
        const { leaseUntil: _older, ...rest } = record;
        record = { ...rest, snapshot, updatedAt: new Date(now).toISOString(), owner: leases.owner };
        const held = mine ? leases.hold(flowId) : await leases.hold(flowId);
        const [saved, heldAgain] = await Promise.allSettled([this.options.store.save(record, revision), held]);
        if (saved.status === 'rejected') {
          await leases.release(flowId);
          if (saved.reason instanceof SnapshotConflictError) return 'owned';
          throw saved.reason;
        }
        if (heldAgain.status === 'rejected') this.options.logger.warn({ flowId, err: heldAgain.reason }, 'could not write the flow into the lease index again (it is there from its first claim)');
        revision = saved.value;
      }
    }
    // A flow that only waits, with no answer kept for it meanwhile, sleeps at once: no
    // actor is built for it until something arrives (100,000 of them resumed in seconds).
    // The events kept for it (sent while no process ran it) are read meanwhile: an event
    // that arrives before they are read wakes it, and they are applied first.
    const plan = this.sleeping.allowed() && record.waiting?.length ? (stored.snapshotOmitted ? record.sleep : sleepPlan(snapshot)) : undefined;
    if (plan) {
      const kept = read?.kept ? Promise.resolve(read.kept) : this.options.keptEvents ? this.readKept(flowId) : Promise.resolve([]);
      this.sleeping.resumed(flowId, record, revision, plan.wakeAt, kept);
      const seq = record.seq ?? 0;
      if (seq > 0 && this.options.onEvent) {
        void this.options
          .onEvent({ flowId, seq, state: record.state, status: 'running', at: record.updatedAt })
          .catch((e: unknown) => this.options.logger.error({ flowId, err: e }, 'could not announce a flow transition'));
      }
      if ((await kept).some((e) => !record.received?.includes(e.eventId) && !record.refused?.includes(e.eventId))) await this.sleeping.wake(flowId);
      return 'resumed';
    }
    const machine = this.options.flows.catalog.machineOf(pattern);
    const hosted = this.host(flowId, pattern, machine, { snapshot: snapshot as Snapshot<unknown> }, record, record.requestId);
    hosted.revision = revision;
    hosted.seq = record.seq ?? 0;
    hosted.steps = record.steps ?? 0;
    hosted.lastCaptured = JSON.stringify(record.snapshot);
    this.journaling.append(hosted, { kind: 'flow', phase: 'resumed', pattern, status: 'running' });
    this.options.logger.info({ flowId, state: record.state }, 'flow resumed from its last snapshot');
    // The last saved transition may not have been announced (a crash between the save and
    // the publish): announce it again, so no seq is missing; a subscriber may see it twice.
    if (hosted.seq > 0 && this.options.onEvent) {
      const event = { flowId, seq: hosted.seq, state: record.state, status: 'running' as const, at: record.updatedAt };
      hosted.chain = hosted.chain.then(() => this.options.onEvent!(event)).catch((e: unknown) => this.failed(hosted, e, 'announce'));
    }
    // A flow that waits may have been sent its answer while no process ran it: those
    // events are read first and applied right after the start, before a deadline that
    // passed meanwhile fires (the wait timer fires on a later turn), in the order sent.
    let kept: KeptEvent[] = [];
    if (read?.kept) kept = read.kept;
    else if (this.options.keptEvents && waitsOf(hosted.actor).length > 0) {
      let release!: () => void;
      hosted.started = new Promise((resolve) => (release = resolve));
      kept = await this.readKept(flowId).finally(() => release());
    }
    // Starting the restored actor reports its root with 'xstate.init': not a transition (the
    // last one was re-announced above), so it takes no seq, no save and no announcement.
    this.startRestored(hosted, kept);
    return 'resumed';
  }

  /** Resumes every unfinished flow in the store; one that cannot be resumed never stops the others. */
  async resumeAll(): Promise<{ resumed: string[]; failed: Array<{ flowId: string; error: string }> }> {
    const resumed: string[] = [];
    const failed: Array<{ flowId: string; error: string }> = [];
    // Several at once: each resume waits on the store (a read, with leases a claim), and
    // one at a time 10,000 flows took 10 s over NATS KV.
    type Outcome = { flowId: string; resumed: boolean; error?: string };
    // Read in one pass where the stores can (every record; every event kept for any flow),
    // not a request per flow: 100,000 flows over NATS took 97 s with three requests each.
    const { store, keptEventsAll } = this.options;
    const all = store.loadAll ? await store.loadAll({ status: 'running' }) : undefined;
    const keptAll = keptEventsAll
      ? await keptEventsAll().catch((e: unknown) => void this.options.logger.warn({ err: e }, 'could not read the events kept for the flows at once; reading them flow by flow'))
      : undefined;
    const todo: Array<{ flowId: string; read?: ReadForResume }> = all
      ? all.map((stored) => ({ flowId: stored.record.flowId, read: { stored, ...(keptAll ? { kept: keptAll.get(stored.record.flowId) ?? [] } : {}) } }))
      : (await store.list({ status: 'running' })).map(({ flowId }) => ({ flowId, ...(keptAll ? { read: { kept: keptAll.get(flowId) ?? [] } } : {}) }));
    const outcomes = await mapLimit(todo, RESUME_CONCURRENCY, async ({ flowId, read }): Promise<Outcome> => {
      try {
        return { flowId, resumed: (await this.resumeOne(flowId, SCAN_BEATS_MAX_AGE_MS, read)) === 'resumed' };
      } catch (e) {
        this.options.logger.error({ flowId, err: e }, 'flow not resumed');
        return { flowId, resumed: false, error: (e as Error).message };
      }
    });
    for (const { flowId, resumed: ok, error } of outcomes) {
      if (error !== undefined) failed.push({ flowId, error });
      else if (ok) resumed.push(flowId);
    }
    return { resumed, failed };
  }

  /** Takes over the flows of the owners whose heartbeat went stale (src/flowLeasing.ts); none without leases. */
  async takeOverExpired(): Promise<string[]> {
    return (await this.leasing?.takeOverExpired()) ?? [];
  }

  /**
   * Takes over, on every tick of the heartbeat, the flows of owners whose heartbeat went
   * stale (`takeOverExpired`); until `stop`. The heartbeat itself runs from this host's
   * first flow or claim on (a resume of many flows may last longer than the lease).
   */
  startLeases(): void {
    this.leasing?.startScanning();
  }

  /** With leases: a heartbeat of this host has landed, and lately (else it may not start or claim a flow). */
  private async leaseReady() {
    await this.leasing?.ready();
  }

  /** Resolves with the flow's final record when it ends (here). */
  finished(flowId: string): Promise<FlowSnapshotRecord> | undefined {
    return this.flows.get(flowId)?.finished ?? this.sleeping.get(flowId)?.finished ?? this.left.get(flowId);
  }

  /** A flow that left this host (ended, lost, stopped by its store): its `finished`, for a caller that asks late. */
  private leave(hosted: HostedFlow) {
    if (this.flows.get(hosted.flowId) === hosted) this.flows.delete(hosted.flowId);
    this.keepLeft(hosted.flowId, hosted.finished);
  }

  /** Keeps a flow's `finished` for a caller that asks after it left (the last 1,000). */
  private keepLeft(flowId: string, finished: Promise<FlowSnapshotRecord>) {
    this.left.set(flowId, finished);
    if (this.left.size > 1_000) this.left.delete(this.left.keys().next().value!);
  }

  /** The record of a flow this host runs (awake or asleep: an asleep one's has no snapshot); undefined when it does not. */
  running(flowId: string): FlowSnapshotRecord | undefined {
    const hosted = this.flows.get(flowId);
    if (!hosted) {
      const asleep = this.sleeping.get(flowId);
      return asleep && { ...asleep.record };
    }
    // The ids applied so far, saved or about to be: a retry sent meanwhile is a duplicate.
    return { ...hosted.record, ...(hosted.received.length ? { received: [...hosted.received] } : {}) };
  }

  /** How many flows this host holds asleep (src/flowSleeping.ts): the ops gauge microtask_flows_asleep. */
  flowsAsleep(): number {
    return this.sleeping.size;
  }

  /** The flows this host holds asleep, with their patterns: counted among the flows it runs (microtask_flows_running). */
  asleepFlows(): Iterable<{ flowId: string; pattern: string }> {
    return this.sleeping.asleep();
  }

  /** Whether this host runs the flow, awake or asleep. */
  private hosts(flowId: string): boolean {
    return this.flows.has(flowId) || this.sleeping.has(flowId);
  }

  /**
   * Applies an event sent to a flow this host runs (a person's answer, an outside
   * event): checked against what the flow waits for now, given to the actor that waits
   * (the root or a child), once per `eventId`. `not-here` when this host does not run the
   * flow; throws EventRefusedError when no wait accepts it or its data is wrong.
   */
  async send(flowId: string, event: KeptEvent): Promise<'applied' | 'duplicate' | 'not-here'> {
    // Cancelled by another process (its record says so): stopped here; its save is refused and `finished` resolves with that record.
    if (event.type === CANCEL_NOTICE) return (await this.cancel(flowId)) ? 'applied' : 'not-here';
    for (;;) {
      const hosted = this.flows.get(flowId) ?? (this.sleeping.has(flowId) ? await this.sleeping.wake(flowId) : undefined);
      if (!hosted) return 'not-here';
      await hosted.started;
      // Put to sleep while this waited (the sleep's announcements acknowledged in the same
      // turn): the flow is still here, asleep; wake it rather than answer "not here".
      if (hosted.frozen && !hosted.ending && !hosted.lost && this.sleeping.has(flowId)) continue;
      if (hosted.ending || hosted.lost || hosted.frozen) return 'not-here';
      return this.applyOrRefuse(hosted, event);
    }
  }

  /**
   * Applies an event, or refuses it for good: a refused id is saved with the flow (with
   * its next save), so a resume that reads the inbox again never applies it to a later
   * wait (a pass nobody has seen).
   */
  private applyOrRefuse(hosted: HostedFlow, event: KeptEvent): 'applied' | 'duplicate' {
    if (hosted.refused.includes(event.eventId)) return 'duplicate';
    try {
      return this.apply(hosted, event);
    } catch (e) {
      if (e instanceof EventRefusedError) {
        remember(hosted.refused, event.eventId);
        hosted.touch = true;
        this.queueWrite(hosted);
      }
      throw e;
    }
  }

  /** What a flow this host runs waits for now; undefined when it does not run it. */
  waiting(flowId: string): FlowWait[] | undefined {
    const asleep = this.sleeping.get(flowId);
    if (asleep) return asleep.record.waiting ?? [];
    const waits = this.liveWaits(flowId);
    return waits && publicWaits(waits);
  }

  /**
   * The waits of a flow this host runs awake, with their actors and schemas (to check an
   * event before it is kept); undefined when it does not run it, or it sleeps (its stored
   * snapshot has them: src/sendEvent.ts).
   */
  liveWaits(flowId: string): LiveWait[] | undefined {
    const hosted = this.flows.get(flowId);
    return hosted ? waitsOf(hosted.actor) : undefined;
  }

  private apply(hosted: HostedFlow, event: KeptEvent): 'applied' | 'duplicate' {
    if (hosted.received.includes(event.eventId)) return 'duplicate';
    // Whoever calls (flow.send, the inbox and the orchestrator refuse it earlier): XState
    // copies a context recursively, and data nested thousands deep overflowed the stack
    // half-way through the transition, after the event was counted as received.
    if (depthExceeds(event.data, MAX_JSON_DEPTH)) {
      throw new EventRefusedError('INVALID_EVENT', `the event's data is nested deeper than ${MAX_JSON_DEPTH} levels of arrays and objects (the limit)`);
    }
    const { wait, data } = matchWait(hosted.flowId, waitsOf(hosted.actor), event, event.sentAt);
    // Saved with the step the event causes (the same record write): applied once, even
    // when the process dies right after and the event is delivered again.
    remember(hosted.received, event.eventId);
    this.options.logger.info({ flowId: hosted.flowId, eventId: event.eventId, type: event.type, actor: wait.actor }, 'event applied to the flow');
    wait.ref.send({ type: event.type, data, eventId: event.eventId });
    return 'applied';
  }

  /** Cancels a flow this host runs; false when it runs elsewhere or not at all. */
  async cancel(flowId: string): Promise<boolean> {
    const hosted = this.flows.get(flowId) ?? (this.sleeping.has(flowId) ? await this.sleeping.wake(flowId) : undefined);
    if (!hosted) return false;
    const inFlight = [...hosted.microtasks.values()].map((m) => m.key);
    // Ended first: the stop's own snapshots are not steps.
    this.finish(hosted, 'cancelled', undefined, { code: 'CANCELLED', message: 'cancelled by request' });
    hosted.actor.stop();
    await hosted.chain;
    if (inFlight.length > 0 && this.options.onCancel) {
      await this.options.onCancel(flowId, inFlight).catch((e: unknown) =>
        this.options.logger.warn({ flowId, err: e }, 'could not withdraw the tasks of a cancelled flow; a worker may still run them'),
      );
    }
    return true;
  }

  /**
   * Stops taking work gracefully: each flow goes on until the microtasks it has in flight
   * are done (their results saved, so a restart does not pay for them again), then stops
   * with its last snapshot saved; after `graceMs`, whatever is left is stopped as `stop`
   * does. The snapshots stay `running`, to be resumed.
   */
  async drain(graceMs: number): Promise<void> {
    const deadline = Date.now() + graceMs;
    // Asleep, a flow has nothing in flight and everything saved: let go at once, so that no
    // answer or deadline wakes it into the drain (an awake one is parked and takes none).
    await Promise.allSettled(this.sleeping.dropAll());
    for (const hosted of this.flows.values()) {
      hosted.awaiting = new Set(hosted.microtasks.keys());
      if (hosted.awaiting.size === 0) this.park(hosted);
    }
    const inFlight = () => [...this.flows.values()].reduce((n, f) => n + (f.awaiting?.size ?? 0), 0);
    if (inFlight() > 0) this.options.logger.info({ microtasks: inFlight(), graceMs }, 'letting the microtasks in flight finish');
    while ([...this.flows.values()].some((f) => !f.lost && !f.ending) && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    const left = inFlight();
    if (left > 0) this.options.logger.warn({ microtasks: left }, 'grace period over: stopping microtasks still in flight (they run again on resume)');
    await this.stop();
  }

  /**
   * Stops one flow now, without ending it, and saves the snapshot it had (a microtask it
   * had just started is in it, to run again on resume).
   */
  private park(hosted: HostedFlow) {
    // A flow whose last microtask took it to its end is ending, not parked.
    if (hosted.lost || hosted.ending || (hosted.actor.getSnapshot() as { status?: string }).status !== 'active') return;
    // Every step so far is captured (pending or saved): write what is pending, then stop
    // taking steps; the stop's own snapshots (children stopped) are not steps.
    hosted.touch = true;
    this.queueWrite(hosted);
    hosted.frozen = true;
    hosted.actor.stop();
    hosted.chain = hosted.chain.then(() => void (hosted.lost = true));
  }

  /** Stops every flow here without ending it (its snapshot stays `running`, to be resumed). */
  async stop(): Promise<void> {
    // With leases, they are given up once the flows are stopped (src/flowLeasing.ts).
    if (this.leasing) await this.leasing.stop(() => this.stopAll());
    else await this.stopAll();
  }

  /** Stops every flow here, awake or asleep, without ending it. */
  private async stopAll(): Promise<void> {
    await Promise.allSettled(this.sleeping.dropAll());
    await this.stopFlows([...this.flows.values()]);
  }

  /** Stops these flows here without ending them: the steps captured so far are written (the stop's own snapshots are not steps). */
  private async stopFlows(flows: HostedFlow[]): Promise<void> {
    for (const hosted of flows) {
      if (!hosted.lost && !hosted.ending) this.queueWrite(hosted);
      hosted.frozen = true;
      hosted.actor.stop();
      hosted.chain = hosted.chain.then(() => void (hosted.lost = true));
    }
    await Promise.all(flows.map((f) => f.chain.then(() => f.announcing)));
    for (const hosted of flows) if (this.flows.get(hosted.flowId) === hosted) this.flows.delete(hosted.flowId);
  }

  /**
   * Starts a restored actor, then applies the events kept for it in the order sent (before
   * a deadline that passed meanwhile fires: the wait timer fires on a later turn). Its
   * root's init report is no transition: no seq, no save, no announcement.
   */
  private startRestored(hosted: HostedFlow, kept: readonly KeptEvent[]) {
    hosted.restoring = true;
    try {
      hosted.actor.start();
    } finally {
      hosted.restoring = false;
    }
    for (const event of kept) {
      try {
        this.applyOrRefuse(hosted, event);
      } catch (e) {
        this.options.logger.warn({ flowId: hosted.flowId, eventId: event.eventId, err: e }, 'an event kept for the flow was not applied');
      }
    }
  }

  /** The events kept for a flow while no process ran it; none (and the cause logged) when they cannot be read. */
  private async readKept(flowId: string): Promise<KeptEvent[]> {
    try {
      return (await this.options.keptEvents?.(flowId)) ?? [];
    } catch (e) {
      this.options.logger.error({ flowId, err: e }, 'could not read the events kept for a waiting flow; they are applied when sent again');
      return [];
    }
  }

  /** A flow woken (src/flowSleeping.ts), built again from the record its wake read, and started as a resume starts it. */
  private rebuild(asleep: SleepingFlow, stored: StoredSnapshot, kept: readonly KeptEvent[]): HostedFlow {
    const { flowId } = asleep;
    const { record, revision } = stored;
    const hosted = this.host(flowId, record.pattern, this.options.flows.catalog.machineOf(record.pattern), { snapshot: record.snapshot as Snapshot<unknown> }, record, record.requestId);
    hosted.revision = revision;
    hosted.seq = record.seq ?? 0;
    hosted.steps = record.steps ?? 0;
    hosted.lastCaptured = JSON.stringify(record.snapshot);
    hosted.finished = asleep.finished;
    hosted.resolveFinished = asleep.resolveFinished;
    this.options.logger.debug({ flowId, state: record.state }, 'flow woken');
    if (asleep.resumed) this.journaling.append(hosted, { kind: 'flow', phase: 'resumed', pattern: record.pattern, status: 'running' });
    // As a resume: the restored root's init report is no transition.
    this.startRestored(hosted, kept);
    return hosted;
  }

  private host(
    flowId: string,
    pattern: string,
    machine: AnyStateMachine,
    origin: { input: unknown } | { snapshot: Snapshot<unknown> },
    previous: FlowSnapshotRecord | undefined,
    requestId: string | undefined,
  ): HostedFlow {
    const hosted = hostedFlow(
      flowId,
      previous ?? {
        flowId,
        pattern,
        machineId: machine.id,
        machineVersion: this.options.flows.catalog.version(pattern) ?? 1,
        status: 'running',
        state: null,
        updatedAt: new Date().toISOString(),
        snapshot: null,
        seq: 0,
        ...(requestId ? { requestId } : {}),
        ...(this.options.lease ? { owner: this.options.lease.owner } : {}),
      },
      previous,
    );
    const inspect = (event: InspectionEvent) => {
      this.options.inspect?.(event);
      if (event.type === '@xstate.event') {
        // A microtask whose result could not be stored: the flow stops where it stands
        // (resumable) before any machine sees the error and falls back.
        const error = (event.event as { error?: unknown }).error;
        if (event.event.type.startsWith('xstate.error.actor') && isStoreUnavailable(error)) this.halt(hosted, error);
        // A cause no fallback helps (a refused key, no credit, an unknown model): the flow
        // ends failed with it, at once, and is stopped before a machine falls back on it.
        else if (event.event.type.startsWith('xstate.error.actor') && isFlowStop(error)) this.stopFailed(hosted, error);
        return;
      }
      if (event.type !== '@xstate.snapshot') return;
      const isRoot = event.actorRef === hosted.actor;
      const snapshot = event.snapshot as { status?: string; value?: unknown; output?: unknown };
      this.journaling.note(hosted, event.actorRef as AnyActorRef, snapshot as Record<string, unknown>, event.event.type);
      if (isRoot && snapshot.status === 'done') {
        // The last step; its announcement is the flow's end, with the end's seq.
        this.capture(hosted, event.actorRef as AnyActorRef, snapshot, event.event.type, false);
        this.finish(hosted, lifecycleStatus(snapshot.output), snapshot.output);
        return;
      }
      // An error is handled by the error listener; a stop is a cancel or a shutdown.
      if (isRoot && (snapshot.status === 'error' || snapshot.status === 'stopped')) return;
      // An invoked actor that is not a machine starts within its parent's transition, and a
      // promise actor (a microtask, a task) ends by telling its parent, which XState reports
      // first: either way the parent's report takes the same whole-flow snapshot, and the
      // step is the parent's. Taking it here too costs a snapshot and its JSON for nothing.
      // (An observable's or a transition actor's other moves are its own: they are steps.)
      if (!isRoot && !isMachineRef(event.actorRef) && MOVES_WITH_PARENT.has(event.event.type)) return;
      this.capture(hosted, event.actorRef as AnyActorRef, snapshot, event.event.type, isRoot);
    };
    hosted.actor = createActor(machine, { ...origin, inspect } as never) as AnyActorRef;
    hosted.actor.subscribe({
      error: (error: unknown) => {
        // A flow already ended (stopped for a cause no fallback helps) is not crashed by the error reaching its root.
        if (hosted.lost || hosted.ending) return;
        this.options.logger.error({ flowId, err: error }, 'flow crashed');
        this.finish(hosted, 'failed', undefined, { code: 'FLOW_CRASHED', message: scrubSecrets((error as Error)?.message ?? String(error)) });
      },
    });
    hosted.record = { ...hosted.record, snapshot: hosted.actor.getPersistedSnapshot(), state: (hosted.actor.getSnapshot() as { value?: unknown }).value ?? null };
    this.flows.set(flowId, hosted);
    return hosted;
  }

  /**
   * Takes a step: the whole flow's persisted snapshot right after one actor of it moved,
   * serialized now (not when the save runs, which would merge fast transitions into one
   * save). XState reports an actor's snapshot once its transition is complete and defers
   * what it does to other actors until then, so every actor's snapshot here is whole.
   */
  private capture(hosted: HostedFlow, ref: AnyActorRef, snapshot: { status?: string; value?: unknown }, eventType: string, isRoot: boolean) {
    if (hosted.ending || hosted.lost || hosted.frozen) return;
    // The root's first report is its start, announced already when its snapshot is the first step's.
    const startAnnounced = isRoot && hosted.startAnnounced === true;
    if (isRoot) hosted.startAnnounced = false;
    const persisted = hosted.actor.getPersistedSnapshot() as { status?: string; error?: unknown };
    // A crashed machine's snapshot holds an Error object; records hold JSON only.
    const jsonSafe = persisted.status === 'error' ? { ...persisted, error: errorInfo(persisted.error) } : persisted;
    const json = JSON.stringify(jsonSafe);
    const machine = (ref as { logic?: { id?: unknown } }).logic?.id;
    const cause = {
      actor: actorPath(ref, hosted.actor),
      machine: typeof machine === 'string' ? machine : 'microtask',
      state: snapshot.value ?? snapshot.status ?? null,
      event: eventType,
    };
    if (json === hosted.lastCaptured) {
      // Nothing new to save. But XState starts the children a transition invokes before it
      // reports the transition itself, so a root transition can find its snapshot already
      // taken, under a child's start: the step is the root's (relabelled while unsaved),
      // and it is announced with its own seq.
      if (!isRoot || hosted.restoring || startAnnounced) return;
      const last = hosted.pending.at(-1);
      if (last && last.seq === undefined && !last.announceOnly) {
        Object.assign(last.step, cause);
        last.seq = ++hosted.seq;
      } else {
        // At the time of the step it re-announces: an event names its step by its time.
        const step = { ...cause, step: hosted.steps, at: hosted.lastStepAt, rootState: snapshot.value ?? null, snapshotJson: json };
        hosted.pending.push({ step, snapshot: undefined, seq: ++hosted.seq, announceOnly: true });
      }
      this.queueWrite(hosted);
      return;
    }
    hosted.lastCaptured = json;
    const rootState = (hosted.actor.getSnapshot() as { value?: unknown }).value ?? null;
    const step: FlowStep = { ...cause, step: ++hosted.steps, at: new Date().toISOString(), rootState, snapshotJson: json };
    hosted.lastStepAt = step.at;
    hosted.pending.push({ step, snapshot: jsonSafe, waiting: publicWaits(waitsOf(hosted.actor)), ...(isRoot ? { seq: ++hosted.seq } : {}) });
    this.queueWrite(hosted);
  }

  /**
   * Queues a write of everything pending, once: steps captured before it starts join it
   * (one save, one fsync for all of them), later ones wait for the next. A flow has at most
   * one save in flight; many flows' saves share the store's group commit.
   */
  private queueWrite(hosted: HostedFlow) {
    if (hosted.writeQueued || hosted.lost) return;
    hosted.writeQueued = true;
    hosted.chain = hosted.chain
      .then(() => {
        hosted.writeQueued = false;
        return this.writePending(hosted);
      })
      .catch((e: unknown) => this.failed(hosted, e, 'save'));
  }

  private async writePending(hosted: HostedFlow) {
    if (hosted.lost) return;
    const batch = hosted.pending.splice(0);
    const saving = batch.filter((p) => !p.announceOnly);
    const ending = hosted.ending;
    // A root transition announced without a step of its own still moves the record's seq:
    // a resumed flow goes on from the seq on disk.
    const journaled =
      saving.length > 0 || batch.some((p) => !p.seqSaved) || hosted.touch || ending ? await this.saveBatch(hosted, saving, batch, ending) : [];
    // Announced only now that they are durable, each root transition with its own seq.
    // The announcements go out in order without waiting on each other's acks (a bus keeps
    // the order of what one connection sends), and the next save does not wait for them.
    // A store that keeps no steps (NATS KV holds the last snapshot) has them in the
    // journal's stream: its acks come first.
    const send = () => {
      const sent: Array<Promise<void> | undefined> = [];
      if (this.options.onEvent) {
        for (const p of batch) {
          if (p.seq !== undefined && p.seq !== ending?.seq) {
            sent.push(this.options.onEvent({ flowId: hosted.flowId, seq: p.seq, state: p.step.rootState, status: 'running', at: p.step.at }));
          }
        }
      }
      if (ending) sent.push(...this.ended(hosted, ending));
      return Promise.all(sent);
    };
    const gate = this.gateSends(hosted, journaled);
    const sending = gate ? gate.then(send) : send();
    const announced = Promise.all([hosted.announcing, sending]).then(() => undefined);
    hosted.announcing = announced.catch((e: unknown) => this.failed(hosted, e, 'announce'));
    // The end waits for every announcement: `finished` means the world was told.
    if (ending) await hosted.announcing;
    // Only waiting now, everything saved: it sleeps (unless something moves it meanwhile).
    else if (hosted.record.waiting?.length) this.sleeping.sleepSoon(hosted);
  }

  /**
   * What the next announcements of a flow wait for: the journal writes given and the gate
   * before (batches are announced in their order). Undefined when nothing is awaited.
   */
  private gateSends(hosted: HostedFlow, journaled: ReadonlyArray<Promise<void>>): Promise<void> | undefined {
    if (journaled.length === 0 && !hosted.sendGate) return undefined;
    const gate = Promise.all([hosted.sendGate, ...journaled]).then(() => undefined);
    hosted.sendGate = gate;
    void gate.then(() => {
      if (hosted.sendGate === gate) hosted.sendGate = undefined;
    });
    return gate;
  }

  /** Saves a batch; resolves with the journal writes of its steps that must land before they are announced. */
  private async saveBatch(hosted: HostedFlow, saving: PendingStep[], batch: PendingStep[], ending: Ending | undefined): Promise<Array<Promise<void>>> {
    hosted.touch = false;
    const last = saving.at(-1);
    const lease = this.options.lease;
    const seq = batch.reduce((s, p) => p.seq ?? s, hosted.record.seq ?? 0);
    const record: FlowSnapshotRecord = {
      ...withoutLeaseUntil(hosted.record),
      ...(ending?.output !== undefined ? { output: ending.output } : {}),
      ...(ending?.error ? { error: ending.error } : {}),
      ...(lease ? { owner: lease.owner } : {}),
      status: ending?.status ?? 'running',
      ...(last ? { state: last.step.rootState as FlowSnapshotRecord['state'], snapshot: last.snapshot as FlowSnapshotRecord['snapshot'], steps: last.step.step } : {}),
      ...(hosted.received.length ? { received: [...hosted.received] } : {}),
      ...(hosted.refused.length ? { refused: [...hosted.refused] } : {}),
      seq: ending?.seq ?? seq,
      updatedAt: new Date().toISOString(),
    };
    // What the flow waits for as of the last step saved; an ended flow waits for nothing.
    const waiting = ending ? undefined : last ? last.waiting : hosted.record.waiting;
    // With whether it only waits (src/flowSleep.ts): a resume may then read its record alone.
    const sleep = !waiting?.length ? undefined : last ? sleepPlan(last.snapshot) : hosted.record.sleep;
    if (waiting?.length) record.waiting = waiting;
    else delete record.waiting;
    if (sleep) record.sleep = sleep;
    else delete record.sleep;
    // Starts waiting when a step of the batch waits and the one before it did not (or for
    // something else): a wait answered and a new one begun in one batch is a new wait.
    let before = JSON.stringify(hosted.record.waiting ?? []);
    let startsWaiting = false;
    for (const p of saving) {
      const now = JSON.stringify(p.waiting ?? []);
      if (now !== before && p.waiting?.length) startsWaiting = true;
      before = now;
    }
    const steps = saving.map((p) => p.step);
    // Where the store keeps the steps, the journal is a view of them, written once they are
    // saved. Where it keeps only the last snapshot (NATS KV), the journal's stream is where
    // the steps are: they go out with the save, not after it, so a process that dies between
    // the two leaves no step unjournaled (one that dies before the save leaves entries its
    // resumed run writes again: readers keep a step's last entry), and both acks are
    // awaited together before the steps are announced.
    const keeps = this.options.store.keepsSteps === true;
    const journaled = keeps ? [] : steps.map((step) => this.journaling.step(hosted, step)).filter((j): j is Promise<void> => j !== undefined);
    hosted.revision = await this.saveRecord(hosted, record, hosted.revision, steps);
    hosted.record = record;
    // Told once the wait is saved: an answer sent from now on finds the flow waiting for it.
    if (startsWaiting) this.options.onWaiting?.(hosted.flowId, record.waiting!);
    if (keeps) for (const step of steps) this.journaling.step(hosted, step, true);
    return journaled;
  }

  /** One save of a flow's record and steps (src/flowSaving.ts): retried while the store's failure may pass. */
  private saveRecord(hosted: HostedFlow, record: FlowSnapshotRecord, expected: number | null, steps: FlowStep[]): Promise<number> {
    const { store, storeRetryMs, storeLocation, logger } = this.options;
    return saveStep(store, record, expected, steps, { retryMs: storeRetryMs, location: storeLocation, logger, givenUp: () => hosted.lost });
  }

  /** Ends the flow: its last step and final record are saved, then its end is announced. */
  private finish(hosted: HostedFlow, status: Exclude<FlowStatus, 'running'>, output?: unknown, error?: { code: string; message: string }) {
    if (hosted.ending || hosted.lost) return;
    hosted.ending = { status, seq: ++hosted.seq, ...(output !== undefined ? { output } : {}), ...(error ? { error } : {}) };
    this.queueWrite(hosted);
    hosted.chain = hosted.chain.finally(() => {
      this.leave(hosted);
      hosted.resolveFinished(hosted.record);
      // Ended (its final record saved): out of the ownership index.
      if (this.leases && hosted.record.status !== 'running') void this.leases.release(hosted.flowId);
    });
    this.options.logger.info({ flowId: hosted.flowId, status }, 'flow finished');
  }

  private ended(hosted: HostedFlow, ending: Ending): Array<Promise<void> | undefined> {
    const { status, output, error, seq } = ending;
    this.journaling.append(hosted, {
      kind: 'flow',
      phase: 'ended',
      pattern: hosted.record.pattern,
      status,
      ...(output !== undefined ? { output } : {}),
      ...(error ? { error } : {}),
    });
    const { flowId, state, updatedAt } = hosted.record;
    return [
      this.options.onEvent?.({ flowId, seq, state, status, at: updatedAt }),
      this.options.onDone?.({ flowId, status, ...(output !== undefined ? { output } : {}), ...(error ? { error } : {}) }),
    ];
  }

  /**
   * Stops a flow whose store failed, where it stands: nothing more is saved or announced,
   * its record stays at its last saved step (`running`, to be resumed once the store is
   * back), and it does not fall back. `finished` resolves with that record and the cause.
   */
  private stopFailed(hosted: HostedFlow, cause: FlowStopError) {
    if (hosted.ending || hosted.lost) return;
    this.options.logger.warn({ flowId: hosted.flowId, code: cause.code }, `flow stopped: ${cause.message}`);
    this.finish(hosted, 'failed', undefined, { code: cause.code, message: scrubSecrets(cause.message) });
    // Not from inside the inspection that reported it: XState is delivering an event.
    queueMicrotask(() => hosted.actor.stop());
  }

  private halt(hosted: HostedFlow, cause: StoreUnavailableError) {
    if (hosted.lost) return;
    hosted.lost = true;
    hosted.pending = [];
    this.leave(hosted);
    // At warn: the command that ran the flow says it in its own line (exit 2); a daemon's log shows it.
    this.options.logger.warn({ flowId: hosted.flowId, step: hosted.record.steps }, `flow stopped, resumable: ${cause.message}`);
    // Not from inside the inspection that reported it: XState is delivering an event.
    queueMicrotask(() => hosted.actor.stop());
    hosted.resolveFinished({ ...hosted.record, error: { code: 'STORE_UNAVAILABLE', message: cause.message } });
  }

  private failed(hosted: HostedFlow, e: unknown, what: 'save' | 'announce'): Promise<void> | undefined {
    if (e instanceof SnapshotConflictError) {
      // Someone else wrote the record: another daemon took the flow over (it carries on
      // there), or `microtask cancel` ended it. Stop here either way, and say which.
      hosted.lost = true;
      hosted.actor.stop();
      this.leave(hosted);
      // Another host holds it now (its own index names it), or it ended.
      if (this.leases) void this.leases.release(hosted.flowId);
      // Returned: the chain waits for it, so `finished` resolves with the record that won.
      return this.options.store
        .load(hosted.flowId)
        .catch(() => undefined)
        .then((stored) => {
          if (stored && stored.record.status !== 'running') {
            this.options.logger.info({ flowId: hosted.flowId, status: stored.record.status }, 'flow ended elsewhere (cancelled); stopped here');
            hosted.resolveFinished(stored.record);
          } else {
            this.options.logger.warn({ flowId: hosted.flowId, reason: e.message }, 'flow taken over by another owner; stopped here');
            hosted.resolveFinished(hosted.record);
          }
        });
    }
    if (what === 'save') {
      this.halt(hosted, isStoreUnavailable(e) ? e : new StoreUnavailableError(`could not save flow ${hosted.flowId}: ${(e as Error)?.message ?? String(e)}`, { cause: e }));
      return;
    }
    // An announcement that failed (the bus): the step is saved, the flow goes on; a
    // subscriber catches up from the record's seq or the journal.
    this.options.logger.error({ flowId: hosted.flowId, err: e }, 'could not announce a flow transition');
    return;
  }
}

/** Why a flow host gave up on a flow it ran, for callers that wait on `finished`. */
export class FlowHaltedError extends Error {
  override readonly name = 'FlowHaltedError';
  readonly code = 'STORE_UNAVAILABLE';
  constructor(
    readonly flowId: string,
    message: string,
  ) {
    super(message);
  }
}

export class FlowHostError extends Error {
  override readonly name = 'FlowHostError';
  constructor(
    readonly code: 'FLOW_NOT_FOUND' | 'INCOMPATIBLE_SNAPSHOT' | 'FLOW_NOT_DEFINED',
    message: string,
  ) {
    super(message);
  }
}
