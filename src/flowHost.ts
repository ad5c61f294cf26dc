import { randomBytes } from 'node:crypto';
import { createActor, type AnyActorRef, type AnyStateMachine, type InspectionEvent, type Snapshot } from 'xstate';
import type { FlowDone, FlowEvent } from './daemon/protocol.js';
import type { Flows } from './flows.js';
import type { Journal } from './journal/Journal.js';
import type { Logger } from './log.js';
import { MicrotaskResultSchema } from './actors/microtaskTypes.js';
import type { JournalEntry } from './journal/Journal.js';
import { errorInfo } from './machines/common.js';
import { isPatternName, machineFor, machineVersions, type PatternName } from './patterns.js';
import {
  CorruptSnapshotError,
  mapLimit,
  SnapshotConflictError,
  type FlowSnapshotRecord,
  type FlowStatus,
  type SnapshotStore,
} from './persistence/SnapshotStore.js';

export interface FlowHostOptions {
  flows: Flows;
  store: SnapshotStore;
  logger: Logger;
  /** Where the tool builder writes tools. */
  outRoot: string;
  /** Told of each transition of a flow's root machine, after its snapshot is on disk. */
  onEvent?: (event: FlowEvent) => Promise<void>;
  /** Told once when a flow ends, after its final record is on disk. */
  onDone?: (done: FlowDone) => Promise<void>;
  /** Sees every inspection event of every flow (progress display, the inspector). */
  inspect?: (event: InspectionEvent) => void;
  /**
   * With several daemons on one store: this host's name and how long its claim on a flow
   * lasts without renewal. A flow whose owner's lease ran out is taken over by another
   * host (`takeOverExpired`). Unset: one owner, no leases (embedded mode).
   */
  lease?: { owner: string; durationMs: number };
  /**
   * Where each flow's history goes: every saved snapshot (a step), every microtask with
   * its prompt and result, the flow's start, resumes and end. For `microtask show`, the
   * inspector and live progress; the flow never waits on it.
   */
  journal?: Journal;
  /**
   * Told, after a flow is cancelled, the keys of the microtasks it had in flight: with
   * workers, their tasks may still be queued, and should not be run for nobody.
   */
  onCancel?: (flowId: string, microtaskKeys: string[]) => Promise<void>;
}

type MicrotaskStart = { kind: 'microtask'; actor: string; key: string; taskType: string };

/** What made a flow take a step: the actor that moved, where it went, and on which event. */
interface StepCause {
  actor: string;
  machine: string;
  state: unknown;
  event: string;
}

interface HostedFlow {
  flowId: string;
  actor: AnyActorRef;
  record: FlowSnapshotRecord;
  revision: number;
  seq: number;
  /** Saves and announcements of one flow, in order; flows never wait on each other. */
  chain: Promise<void>;
  lastSaved: string;
  finished: Promise<FlowSnapshotRecord>;
  resolveFinished: (record: FlowSnapshotRecord) => void;
  /** Set when another owner took the flow over, or this host stopped: nothing more is saved. */
  lost: boolean;
  /** Set once the flow's end is being saved. */
  ending: boolean;
  /** Snapshots saved so far (the journal's step number). */
  steps: number;
  /** The latest transition not yet saved, for the journal. */
  cause: StepCause | undefined;
  /** Microtask actors in flight (journaled at their start). */
  microtasks: Map<AnyActorRef, MicrotaskStart>;
  /** While draining: the microtasks that were in flight when it began, not yet finished. */
  awaiting: Set<AnyActorRef> | undefined;
}

/** Flows resumed at once when a host starts. */
const RESUME_CONCURRENCY = 32;

export const newFlowId = (pattern: string) => `${pattern}-${Date.now().toString(36)}-${randomBytes(4).toString('hex')}`;

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
  private leaseTimer: NodeJS.Timeout | undefined;

  constructor(private readonly options: FlowHostOptions) {}

  /** Starts a flow; resolves once its first snapshot is saved. */
  async start(pattern: PatternName, input: Record<string, unknown>, meta: { flowId?: string; requestId?: string } = {}): Promise<string> {
    const flowId = meta.flowId ?? newFlowId(pattern);
    const machine = machineFor(this.options.flows, pattern) as AnyStateMachine;
    const flowInput = {
      ...input,
      key: (input.key as string | undefined) ?? flowId,
      ...(pattern === 'tool-builder' ? { outRoot: this.options.outRoot } : {}),
    };
    const hosted = this.host(flowId, pattern, machine, { input: flowInput }, undefined, meta.requestId);
    // The first save is the first step: a flow that ends in its first microsteps has one to travel to.
    hosted.steps = 1;
    hosted.record = { ...hosted.record, steps: 1 };
    try {
      hosted.revision = await this.options.store.save(hosted.record, null);
    } catch (e) {
      this.flows.delete(flowId);
      throw e;
    }
    hosted.lastSaved = JSON.stringify(hosted.record.snapshot);
    this.journal(hosted, { kind: 'flow', phase: 'started', pattern, status: 'running', input: flowInput });
    const { machineId, state } = hosted.record;
    this.journal(hosted, { kind: 'step', step: 1, actor: 'root', machine: machineId, state, event: 'xstate.init', rootState: state, snapshot: undefined }, hosted.lastSaved);
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
    if (this.flows.has(flowId)) return 'running';
    let stored;
    try {
      stored = await this.options.store.load(flowId);
    } catch (e) {
      if (e instanceof CorruptSnapshotError) {
        await this.options.store.moveAside(flowId, e.reason);
        this.options.logger.error({ flowId, reason: e.reason }, 'corrupt snapshot moved aside; the flow cannot be resumed');
      }
      throw e;
    }
    if (!stored) throw new FlowHostError('FLOW_NOT_FOUND', `no flow ${flowId} in the snapshot store`);
    let { record, revision } = stored;
    if (record.status !== 'running') return 'finished';
    const lease = this.options.lease;
    if (lease && record.owner && record.owner !== lease.owner && record.leaseUntil && Date.parse(record.leaseUntil) > Date.now()) {
      return 'owned';
    }
    const pattern = record.pattern;
    if (!isPatternName(pattern) || record.machineVersion !== machineVersions[pattern]) {
      const message = isPatternName(pattern)
        ? `its snapshot is of ${record.machineId} version ${record.machineVersion}; this build runs version ${machineVersions[pattern]}`
        : `its pattern "${pattern}" is unknown to this build`;
      await this.options.store.save(
        { ...record, status: 'failed', updatedAt: new Date().toISOString(), error: { code: 'INCOMPATIBLE_SNAPSHOT', message } },
        revision,
      );
      throw new FlowHostError('INCOMPATIBLE_SNAPSHOT', `flow ${flowId} cannot be resumed: ${message}`);
    }
    if (lease) {
      // Claim it first (compare-and-set): of two hosts taking it over, one wins, the other leaves it.
      record = { ...record, owner: lease.owner, leaseUntil: new Date(Date.now() + lease.durationMs).toISOString() };
      try {
        revision = await this.options.store.save(record, revision);
      } catch (e) {
        if (e instanceof SnapshotConflictError) return 'owned';
        throw e;
      }
    }
    const machine = machineFor(this.options.flows, pattern) as AnyStateMachine;
    const hosted = this.host(flowId, pattern, machine, { snapshot: record.snapshot as Snapshot<unknown> }, record, record.requestId);
    hosted.revision = revision;
    hosted.seq = record.seq ?? 0;
    hosted.steps = record.steps ?? 0;
    hosted.lastSaved = JSON.stringify(record.snapshot);
    this.journal(hosted, { kind: 'flow', phase: 'resumed', pattern, status: 'running' });
    this.options.logger.info({ flowId, state: record.state }, 'flow resumed from its last snapshot');
    // The last saved transition may not have been announced (a crash between the save and
    // the publish): announce it again, so no seq is missing; a subscriber may see it twice.
    if (hosted.seq > 0 && this.options.onEvent) {
      const event = { flowId, seq: hosted.seq, state: record.state, status: 'running' as const, at: record.updatedAt };
      hosted.chain = hosted.chain.then(() => this.options.onEvent!(event)).catch((e: unknown) => this.failed(hosted, e));
    }
    hosted.actor.start();
    return 'resumed';
  }

  /** Resumes every unfinished flow in the store; one that cannot be resumed never stops the others. */
  async resumeAll(): Promise<{ resumed: string[]; failed: Array<{ flowId: string; error: string }> }> {
    const resumed: string[] = [];
    const failed: Array<{ flowId: string; error: string }> = [];
    // Several at once: each resume waits on the store (a read, with leases a claim), and
    // one at a time 10,000 flows took 10 s over NATS KV.
    type Outcome = { flowId: string; resumed: boolean; error?: string };
    const outcomes = await mapLimit(await this.options.store.list({ status: 'running' }), RESUME_CONCURRENCY, async ({ flowId }): Promise<Outcome> => {
      try {
        return { flowId, resumed: (await this.resume(flowId)) === 'resumed' };
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

  /**
   * Takes over the unfinished flows whose owner's lease ran out (a daemon that died), and
   * renews this host's leases. Called on a timer by `startLeases`.
   */
  async takeOverExpired(): Promise<string[]> {
    const taken: string[] = [];
    for (const { flowId } of await this.options.store.list({ status: 'running' })) {
      if (this.flows.has(flowId)) continue;
      try {
        if ((await this.resume(flowId)) === 'resumed') {
          taken.push(flowId);
          this.options.logger.warn({ flowId }, 'took over a flow whose owner stopped renewing its lease');
        }
      } catch (e) {
        this.options.logger.error({ flowId, err: e }, 'could not take over a flow');
      }
    }
    return taken;
  }

  /** Renews this host's leases and takes over expired ones, until `stop`. */
  startLeases(): void {
    const lease = this.options.lease;
    if (!lease || this.leaseTimer) return;
    this.leaseTimer = setInterval(() => {
      for (const hosted of this.flows.values()) this.renew(hosted);
      void this.takeOverExpired().catch((e: unknown) => this.options.logger.error({ err: e }, 'lease scan failed'));
    }, Math.max(50, Math.floor(lease.durationMs / 3)));
    this.leaseTimer.unref();
  }

  private renew(hosted: HostedFlow) {
    if (hosted.ending || hosted.lost) return;
    hosted.chain = hosted.chain.then(() => this.save(hosted, 'running', {}, true)).catch((e: unknown) => this.failed(hosted, e));
  }

  /** Resolves with the flow's final record when it ends (here). */
  finished(flowId: string): Promise<FlowSnapshotRecord> | undefined {
    return this.flows.get(flowId)?.finished;
  }

  running(flowId: string): FlowSnapshotRecord | undefined {
    return this.flows.get(flowId)?.record;
  }

  /** Cancels a flow this host runs; false when it runs elsewhere or not at all. */
  async cancel(flowId: string): Promise<boolean> {
    const hosted = this.flows.get(flowId);
    if (!hosted) return false;
    const inFlight = [...hosted.microtasks.values()].map((m) => m.key);
    hosted.actor.stop();
    this.finish(hosted, 'cancelled', undefined, { code: 'CANCELLED', message: 'cancelled by request' });
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
    const snapshot = hosted.actor.getPersistedSnapshot();
    // Saves queued before this one see `lost` and skip: this one holds the latest state.
    hosted.lost = true;
    hosted.actor.stop();
    hosted.chain = hosted.chain.then(() => this.save(hosted, 'running', {}, false, snapshot)).catch((e: unknown) => this.failed(hosted, e));
  }

  /** Stops every flow here without ending it (its snapshot stays `running`, to be resumed). */
  async stop(): Promise<void> {
    if (this.leaseTimer) clearInterval(this.leaseTimer);
    this.leaseTimer = undefined;
    const flows = [...this.flows.values()];
    for (const hosted of flows) {
      hosted.lost = true;
      hosted.actor.stop();
    }
    await Promise.all(flows.map((f) => f.chain));
    // Give up the leases: a restart, or another daemon, resumes these flows at once
    // instead of waiting for the leases to run out (and the microtasks' deadlines with them).
    if (this.options.lease) {
      await Promise.all(
        flows
          .filter((f) => !f.ending)
          .map((f) =>
            this.options.store
              .save({ ...f.record, leaseUntil: new Date().toISOString() }, f.revision)
              .catch((e: unknown) => this.options.logger.warn({ flowId: f.flowId, err: e }, 'could not release the lease')),
          ),
      );
    }
    this.flows.clear();
  }

  private host(
    flowId: string,
    pattern: PatternName,
    machine: AnyStateMachine,
    origin: { input: unknown } | { snapshot: Snapshot<unknown> },
    previous: FlowSnapshotRecord | undefined,
    requestId: string | undefined,
  ): HostedFlow {
    let resolveFinished!: (record: FlowSnapshotRecord) => void;
    const hosted: HostedFlow = {
      flowId,
      actor: undefined as unknown as AnyActorRef,
      record: previous ?? {
        flowId,
        pattern,
        machineId: machine.id,
        machineVersion: machineVersions[pattern],
        status: 'running',
        state: null,
        updatedAt: new Date().toISOString(),
        snapshot: null,
        seq: 0,
        ...(requestId ? { requestId } : {}),
        ...(this.options.lease
          ? { owner: this.options.lease.owner, leaseUntil: new Date(Date.now() + this.options.lease.durationMs).toISOString() }
          : {}),
      },
      revision: 0,
      seq: 0,
      chain: Promise.resolve(),
      lastSaved: '',
      finished: new Promise((resolve) => (resolveFinished = resolve)),
      resolveFinished,
      lost: false,
      ending: false,
      steps: 0,
      cause: undefined,
      microtasks: new Map(),
      awaiting: undefined,
    };
    const inspect = (event: InspectionEvent) => {
      this.options.inspect?.(event);
      // Any actor of this flow's system moved (the root or a child): save. Only the
      // root's transitions are announced.
      if (event.type !== '@xstate.snapshot') return;
      const isRoot = event.actorRef === hosted.actor;
      const snapshot = event.snapshot as { status?: string; value?: unknown; output?: unknown };
      this.note(hosted, event.actorRef as AnyActorRef, snapshot as Record<string, unknown>, event.event.type);
      if (isRoot && snapshot.status === 'done') {
        this.finish(hosted, lifecycleStatus(snapshot.output), snapshot.output);
        return;
      }
      // An error is handled by the error listener; a stop is a cancel or a shutdown.
      if (isRoot && (snapshot.status === 'error' || snapshot.status === 'stopped')) return;
      this.persist(hosted, isRoot ? snapshot.value : undefined);
    };
    hosted.actor = createActor(machine, { ...origin, inspect } as never) as AnyActorRef;
    hosted.actor.subscribe({
      error: (error: unknown) => {
        this.options.logger.error({ flowId, err: error }, 'flow crashed');
        this.finish(hosted, 'failed', undefined, { code: 'FLOW_CRASHED', message: (error as Error)?.message ?? String(error) });
      },
    });
    hosted.record = { ...hosted.record, snapshot: hosted.actor.getPersistedSnapshot(), state: (hosted.actor.getSnapshot() as { value?: unknown }).value ?? null };
    this.flows.set(flowId, hosted);
    return hosted;
  }

  /** Queues a save of the flow's current snapshot and, for a root transition, its event. */
  private persist(hosted: HostedFlow, rootState: unknown) {
    // Children are stopped after the root ends; their last snapshots change nothing.
    if (hosted.ending || hosted.lost) return;
    const announce = rootState !== undefined;
    const seq = announce ? ++hosted.seq : hosted.seq;
    hosted.chain = hosted.chain
      .then(async () => {
        if (hosted.lost || hosted.ending) return;
        await this.save(hosted, 'running');
        if (announce && this.options.onEvent) {
          await this.options.onEvent({ flowId: hosted.flowId, seq, state: rootState, status: 'running', at: hosted.record.updatedAt });
        }
      })
      .catch((e: unknown) => this.failed(hosted, e));
  }

  /**
   * For the journal: remembers the transition a save will record, and writes a
   * microtask's start (its first snapshot) and end (its output, the result envelope).
   */
  private note(hosted: HostedFlow, ref: AnyActorRef, snapshot: Record<string, unknown>, eventType: string) {
    const machine = (ref as { logic?: { id?: unknown } }).logic?.id;
    if (typeof machine === 'string') {
      // XState hands a child's result to its parent before it reports the child done: say
      // the microtask finished before the transition its result caused.
      if (eventType.startsWith('xstate.done.actor.')) {
        for (const [child, started] of hosted.microtasks) {
          const childSnapshot = child.getSnapshot() as { status?: string; output?: unknown };
          if (childSnapshot.status === 'done') this.microtaskFinished(hosted, child, started, childSnapshot.output);
        }
      }
      hosted.cause = { actor: actorPath(ref, hosted.actor), machine, state: snapshot.value, event: eventType };
      // A child that ends or is stopped with its parent moved nowhere new.
      if (snapshot.status === 'active' || snapshot.status === 'done') this.journal(hosted, { kind: 'transition', ...hosted.cause });
      return;
    }
    // A promise actor drops its input when done: its start is remembered by reference.
    const started = hosted.microtasks.get(ref);
    if (started) {
      if (snapshot.status === 'done') this.microtaskFinished(hosted, ref, started, snapshot.output);
      return;
    }
    const input = snapshot.input as { taskType?: unknown; key?: unknown; prompt?: unknown; system?: unknown; data?: unknown } | undefined;
    if (typeof input?.taskType !== 'string' || typeof input.key !== 'string' || typeof input.prompt !== 'string') return;
    const base = { kind: 'microtask' as const, actor: actorPath(ref, hosted.actor), key: input.key, taskType: input.taskType };
    hosted.microtasks.set(ref, base);
    if (!this.options.journal) return;
    const entry = {
      ...base,
      phase: 'started' as const,
      prompt: input.prompt,
      ...(typeof input.system === 'string' ? { system: input.system } : {}),
      ...(input.data !== undefined ? { data: input.data } : {}),
    };
    // A child starts while its parent's transition is still being processed: journal the
    // start after that transition, which is reported when the processing ends.
    queueMicrotask(() => this.journal(hosted, entry));
  }

  private microtaskFinished(hosted: HostedFlow, ref: AnyActorRef, started: MicrotaskStart, output: unknown) {
    hosted.microtasks.delete(ref);
    if (this.options.journal) {
      const result = MicrotaskResultSchema.safeParse(output);
      this.journal(hosted, { ...started, phase: 'finished', ...(result.success ? { result: result.data } : {}) });
    }
    // Draining: the flow stops once what it had in flight is done. A microtask its machine
    // started on this result has not called its model yet (its runner is still awaiting
    // the results store), so stopping now aborts it before it costs anything.
    if (hosted.awaiting?.delete(ref) && hosted.awaiting.size === 0) this.park(hosted);
  }

  private journal(hosted: HostedFlow, entry: DistributiveOmit<JournalEntry, 'flowId' | 'at'>, snapshotJson?: string) {
    this.options.journal?.append({ ...entry, flowId: hosted.flowId, at: new Date().toISOString() } as JournalEntry, snapshotJson);
  }

  /** Saves the current snapshot (once per change), as the flow's new record. */
  private async save(hosted: HostedFlow, status: FlowStatus, extra: Partial<FlowSnapshotRecord> = {}, force = false, taken?: unknown) {
    const persisted = (taken ?? hosted.actor.getPersistedSnapshot()) as { status?: string; error?: unknown };
    // A crashed machine's snapshot holds an Error object; records hold JSON only.
    const snapshot = persisted.status === 'error' ? { ...persisted, error: errorInfo(persisted.error) } : persisted;
    const json = JSON.stringify(snapshot);
    const changed = json !== hosted.lastSaved;
    if (!force && !changed && status === hosted.record.status && !extra.output && !extra.error) return;
    const steps = hosted.steps + (changed ? 1 : 0);
    const lease = this.options.lease;
    const record: FlowSnapshotRecord = {
      ...hosted.record,
      ...extra,
      ...(lease ? { owner: lease.owner, leaseUntil: new Date(Date.now() + lease.durationMs).toISOString() } : {}),
      status,
      state: (snapshot as { value?: unknown }).value ?? hosted.record.state,
      snapshot,
      seq: hosted.seq,
      steps,
      updatedAt: new Date().toISOString(),
    };
    hosted.revision = await this.options.store.save(record, hosted.revision);
    hosted.record = record;
    hosted.lastSaved = json;
    hosted.steps = steps;
    if (changed && this.options.journal) {
      const rootState = record.state;
      const cause = hosted.cause ?? { actor: 'root', machine: record.machineId, state: rootState, event: 'xstate.init' };
      hosted.cause = undefined;
      this.journal(hosted, { kind: 'step', step: steps, ...cause, rootState, snapshot: undefined }, json);
    }
  }

  private finish(hosted: HostedFlow, status: Exclude<FlowStatus, 'running'>, output?: unknown, error?: { code: string; message: string }) {
    if (hosted.ending || hosted.lost) return;
    hosted.ending = true;
    const seq = ++hosted.seq;
    hosted.chain = hosted.chain
      .then(async () => {
        await this.save(hosted, status, { ...(output !== undefined ? { output } : {}), ...(error ? { error } : {}) });
        this.journal(hosted, {
          kind: 'flow',
          phase: 'ended',
          pattern: hosted.record.pattern,
          status,
          ...(output !== undefined ? { output } : {}),
          ...(error ? { error } : {}),
        });
        const { flowId, state, updatedAt } = hosted.record;
        await this.options.onEvent?.({ flowId, seq, state, status, at: updatedAt });
        await this.options.onDone?.({ flowId, status, ...(output !== undefined ? { output } : {}), ...(error ? { error } : {}) });
      })
      .catch((e: unknown) => this.failed(hosted, e))
      .finally(() => {
        this.flows.delete(hosted.flowId);
        hosted.resolveFinished(hosted.record);
      });
    this.options.logger.info({ flowId: hosted.flowId, status }, 'flow finished');
  }

  private failed(hosted: HostedFlow, e: unknown): Promise<void> | undefined {
    if (e instanceof SnapshotConflictError) {
      // Someone else wrote the record: another daemon took the flow over (it carries on
      // there), or `microtask cancel` ended it. Stop here either way, and say which.
      hosted.lost = true;
      hosted.actor.stop();
      this.flows.delete(hosted.flowId);
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
      return;
    }
    this.options.logger.error({ flowId: hosted.flowId, err: e }, 'could not save or announce a flow transition');
  }
}

type DistributiveOmit<T, K extends PropertyKey> = T extends unknown ? Omit<T, K> : never;

/** `root`, or the ids of the actors from the root's child down to this one: `module-auth/generate`. */
function actorPath(ref: AnyActorRef, root: AnyActorRef): string {
  const ids: string[] = [];
  for (let current: AnyActorRef | undefined = ref; current && current !== root; current = current._parent as AnyActorRef | undefined) {
    ids.unshift(current.id);
  }
  return ids.length > 0 ? ids.join('/') : 'root';
}

export class FlowHostError extends Error {
  override readonly name = 'FlowHostError';
  constructor(
    readonly code: 'FLOW_NOT_FOUND' | 'INCOMPATIBLE_SNAPSHOT',
    message: string,
  ) {
    super(message);
  }
}
