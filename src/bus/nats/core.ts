import type { JetStreamClient, JetStreamManager } from '@nats-io/jetstream';
import type { Kvm } from '@nats-io/kv';
import type { NatsBusStatus } from './connection.js';

/**
 * What a work queue, KV bucket or event log needs of the NatsBus that opened it. NatsBus.ts
 * hands its parts this rather than itself, so that they do not import it (a cycle).
 */
export interface NatsBusCore {
  readonly js: JetStreamClient;
  readonly jsm: JetStreamManager;
  readonly kvm: Kvm;
  /** The subject prefix (`microtask`), and as it appears in stream names (`MICROTASK`). */
  readonly prefix: string;
  readonly streamPrefix: string;
  /** Copies of each stream and bucket (NatsBusOptions.replicas). */
  readonly replicas: number;
  /** Delay before a job whose handler threw is delivered again. */
  readonly retryAfterThrowMs: number;
  /** Throws BusError CLOSED once the bus is closed. */
  assertOpen(): void;
  assertSubject(subject: string, wildcards: boolean): void;
  /** Adds something for close() to stop; returns a function that removes it. */
  register(stoppable: { stop(): Promise<void> }): () => void;
  /** Turns a client error into a BusError where one fits; others pass through. */
  mapError(e: unknown, what: string, timeoutMs?: number): Error;
  onStatus(listener: (status: NatsBusStatus) => void): () => void;
}
