import type { InspectionEvent } from 'xstate';
import type { FlowDone, FlowEvent } from './contracts/flowEvents.js';
import type { KeptEvent } from './contracts/waits.js';
import type { FlowWait } from './flowWaits.js';
import type { Flows } from './flows.js';
import type { Journal } from './journal/Journal.js';
import type { LeaseBoard } from './leases.js';
import type { Logger } from './log.js';
import type { SnapshotStore } from './persistence/SnapshotStore.js';

/** What a flow host (src/flowHost.ts) is given: the flows it runs, where it saves them, whom it tells. */
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
   * With several daemons on one store: this host's name, and how long its flows stay its
   * own after its last heartbeat (written every third of that, once per host: src/leases.ts).
   * A flow whose owner's heartbeat went stale is taken over by another host
   * (`takeOverExpired`). `board` is where heartbeats and the ownership index are kept
   * (NATS KV for daemons); unset, the hosts of this process given the same store share one
   * in memory. Unset lease: one owner, no leases (embedded mode).
   */
  lease?: { owner: string; durationMs: number; board?: LeaseBoard };
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
  /**
   * How long a save that fails for a passing reason (a timeout, a bus reconnecting) is
   * tried again before the flow is stopped (resumable). A full disk is not waited for.
   */
  storeRetryMs?: number;
  /** Where the store keeps flows, for messages (`ENOSPC: no space left on <where>`). */
  storeLocation?: string;
  /** A microtask's timeout when its input sets none (MICROTASK_TIMEOUT_MS): bounds the time a resumed one gets. */
  defaultTimeoutMs?: number;
  /**
   * The events kept for a flow (sent while no process ran it: src/inbox), oldest first:
   * read when a flow that waits is resumed, and applied before anything else happens.
   */
  keptEvents?: (flowId: string) => Promise<KeptEvent[]>;
  /** Told when a flow starts waiting (for a person, an event), once that is saved, with what it waits for. */
  onWaiting?: (flowId: string, waits: FlowWait[]) => void;
  /**
   * Every event kept for any flow, by flow (read once when a host resumes all its flows,
   * instead of `keptEvents` per flow).
   */
  keptEventsAll?: () => Promise<Map<string, KeptEvent[]>>;
  /**
   * How long a flow that only waits (for a person, an event, its deadline) stays a live
   * actor before it sleeps: kept as its record, without its snapshot, and restored from
   * the store when an event, its deadline or a cancel arrives (src/flowSleep.ts). 0 (the
   * default): as soon as its wait is saved. `Infinity`: never.
   */
  sleepAfterMs?: number;
}
