import type { AnyActorRef } from 'xstate';
import type { KeptEvent } from './contracts/waits.js';
import type { FlowWait } from './flowWaits.js';
import type { FlowSnapshotRecord, FlowStatus, FlowStep } from './persistence/SnapshotStore.js';

/**
 * What a flow host holds of each flow it runs (src/flowHost.ts): awake (a live actor tree,
 * the steps captured and not yet saved, the chain of its saves) or asleep (its record).
 * Shared by the host and the parts it is made of (src/flowJournaling.ts, src/flowSaving.ts,
 * src/flowSleeping.ts).
 */

/** The ids of the events applied to a flow kept in its record: a resend of one of these is not applied again. */
export const RECEIVED_KEPT = 1_000;

/** Adds an event id to a flow's list of those applied (or refused), keeping the last RECEIVED_KEPT. */
export function remember(ids: string[], eventId: string) {
  ids.push(eventId);
  if (ids.length > RECEIVED_KEPT) ids.splice(0, ids.length - RECEIVED_KEPT);
}

export type MicrotaskStart = { kind: 'microtask'; actor: string; key: string; taskType: string };

/** A step captured when it happened, waiting for its save. */
export interface PendingStep {
  step: FlowStep;
  /** The persisted snapshot (the object `step.snapshotJson` was made of). */
  snapshot: unknown;
  /** Set for a transition of the root: announced with this seq once durable. */
  seq?: number;
  /** What the flow waits for after this step (people, outside events); empty: nothing. */
  waiting?: FlowWait[];
  /** A root transition whose snapshot an earlier step, already saved, holds: announced, not saved again. */
  announceOnly?: boolean;
  /** Its seq is on disk already (the start's, saved with the first step): no save is owed for it. */
  seqSaved?: boolean;
}

/**
 * A flow asleep here (src/flowSleep.ts, src/flowSleeping.ts): what is left of it is its record without the
 * snapshot, its revision (a wake that finds another one stored knows another process
 * wrote it) and the timer of its earliest deadline.
 */
export interface SleepingFlow {
  flowId: string;
  record: FlowSnapshotRecord;
  revision: number;
  finished: Promise<FlowSnapshotRecord>;
  resolveFinished: (record: FlowSnapshotRecord) => void;
  timer: NodeJS.Timeout | undefined;
  /** Set while it is restored: every caller that wakes it meanwhile gets the same flow. */
  waking: Promise<HostedFlow | undefined> | undefined;
  /** Resumed asleep: the events kept for it while no process ran it, applied first when it wakes. */
  kept?: Promise<KeptEvent[]>;
  /** Its earliest deadline (epoch ms), when it has one. */
  wakeAt?: number;
  /** Resumed asleep (a host's start): its resume is journaled when it wakes. */
  resumed?: boolean;
}

/** The end of a flow, saved with (or after) its last step. */
export interface Ending {
  status: Exclude<FlowStatus, 'running'>;
  seq: number;
  output?: unknown;
  error?: { code: string; message: string };
}

export interface HostedFlow {
  flowId: string;
  /** True while resume starts the restored actor (its root's init report is no transition). */
  restoring?: boolean;
  /** Set by start until the root reports its start: that report was announced with the first step (seq 1). */
  startAnnounced?: boolean;
  actor: AnyActorRef;
  record: FlowSnapshotRecord;
  revision: number;
  /** The seq of the last root transition captured (announced once it is saved). */
  seq: number;
  /** Saves of one flow, in order; flows never wait on each other. */
  chain: Promise<void>;
  /** The announcements sent and not yet acknowledged (they never hold the next save up). */
  announcing: Promise<void> | undefined;
  /** Set while a batch waits for its steps' journal entries before it is announced: the next batch is sent after it. */
  sendGate: Promise<void> | undefined;
  /** A write of the pending steps is on the chain and has not started: later steps join it. */
  writeQueued: boolean;
  /** Steps captured and not yet saved, in order. */
  pending: PendingStep[];
  /** The JSON of the last step captured: a change of nothing is no step. */
  lastCaptured: string;
  /** When the last step captured was taken. */
  lastStepAt: string;
  /** A save with no new step is owed (a parked flow). */
  touch: boolean;
  ending: Ending | undefined;
  finished: Promise<FlowSnapshotRecord>;
  resolveFinished: (record: FlowSnapshotRecord) => void;
  /** Set when another owner took the flow over, this host stopped, or its store failed: nothing more is saved. */
  lost: boolean;
  /** Stopped here (parked, shut down): no more steps are captured; those captured are still written. */
  frozen: boolean;
  /** Steps captured so far (the last step's number, across resumes). */
  steps: number;
  /** Microtask actors in flight (journaled at their start). */
  microtasks: Map<AnyActorRef, MicrotaskStart>;
  /** While draining: the microtasks that were in flight when it began, not yet finished. */
  awaiting: Set<AnyActorRef> | undefined;
  /** The ids of the events applied to the flow, oldest first (the last RECEIVED_KEPT), saved with its record. */
  received: string[];
  /** Resolves once the actor is started (a resume may first read the events kept for it). */
  started: Promise<void>;
  /** The ids of the events refused (the last RECEIVED_KEPT), saved with its record: never applied later. */
  refused: string[];
}

/**
 * A flow as its host first holds it, before its actor is made (the host sets it): its
 * record (the stored one when restored, `previous`), nothing captured or saved yet.
 */
export function hostedFlow(flowId: string, record: FlowSnapshotRecord, previous: FlowSnapshotRecord | undefined): HostedFlow {
  let resolveFinished!: (record: FlowSnapshotRecord) => void;
  return {
    flowId,
    actor: undefined as unknown as AnyActorRef,
    record,
    revision: 0,
    seq: 0,
    chain: Promise.resolve(),
    announcing: undefined,
    sendGate: undefined,
    writeQueued: false,
    pending: [],
    lastCaptured: '',
    lastStepAt: previous?.updatedAt ?? new Date().toISOString(),
    touch: false,
    ending: undefined,
    finished: new Promise((resolve) => (resolveFinished = resolve)),
    resolveFinished,
    lost: false,
    frozen: false,
    steps: 0,
    microtasks: new Map(),
    awaiting: undefined,
    received: [...(previous?.received ?? [])],
    started: Promise.resolve(),
    refused: [...(previous?.refused ?? [])],
  };
}

/** Whether a flow's list of event ids is the one in its record (the same last id and length: the list only grows at its end). */
export function sameIds(ids: readonly string[], saved: readonly string[] | undefined): boolean {
  return ids.length === (saved?.length ?? 0) && ids.at(-1) === saved?.at(-1);
}

export type DistributiveOmit<T, K extends PropertyKey> = T extends unknown ? Omit<T, K> : never;


/** `root`, or the ids of the actors from the root's child down to this one: `module-auth/generate`. */
export function actorPath(ref: AnyActorRef, root: AnyActorRef): string {
  const ids: string[] = [];
  for (let current: AnyActorRef | undefined = ref; current && current !== root; current = current._parent as AnyActorRef | undefined) {
    ids.unshift(current.id);
  }
  return ids.length > 0 ? ids.join('/') : 'root';
}
