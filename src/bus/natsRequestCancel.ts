import { RequestOne } from '@nats-io/transport-node/lib/nats-base-client.js';

/**
 * nats-core (3.4) ends every request, the successful ones too, by cancelling it after
 * settling its promise, and the cancel builds `new RequestError("cancelled")` to reject that
 * promise, which is already settled: the Error and its stack trace are thrown away. Every
 * request and every JetStream publish (KV puts, journal entries, work-queue jobs) pays for
 * one; in the daemon's profile at 64 microtasks in flight it was 8% of its CPU.
 *
 * This makes that throwaway Error without a stack trace: the cancel a request's own
 * resolver makes runs with `Error.stackTraceLimit` at 0. Nothing else changes: the
 * library's own code still runs, any other cancel (a closed connection, a caller's) builds
 * its error as before, and the errors callers see are made elsewhere. Applied once per
 * process, when this module loads; a version whose RequestOne lacks these methods is left
 * as it is.
 */
const resolving: unique symbol = Symbol('microtask.resolving');
/** The same symbol for every copy of this module a process loads: the patch goes on once. */
const patched: unique symbol = Symbol.for('microtask.natsRequestCancel') as never;

interface PatchedRequest {
  resolver?: (this: PatchedRequest, err: Error | null, msg: unknown) => void;
  cancel?: (this: PatchedRequest, err?: Error) => void;
  [resolving]?: boolean;
  [patched]?: boolean;
}

const proto = (RequestOne as unknown as { prototype?: PatchedRequest } | undefined)?.prototype;

/** Whether the patch is in place (for the test). */
export const requestCancelPatched: boolean = patch();

function patch(): boolean {
  if (!proto || typeof proto.resolver !== 'function' || typeof proto.cancel !== 'function') return false;
  if (proto[patched]) return true;
  const { resolver, cancel } = proto;
  proto.resolver = function (this: PatchedRequest, err: Error | null, msg: unknown) {
    this[resolving] = true;
    try {
      return resolver.call(this, err, msg);
    } finally {
      this[resolving] = false;
    }
  };
  proto.cancel = function (this: PatchedRequest, err?: Error) {
    if (err !== undefined || !this[resolving]) return cancel.call(this, err);
    const limit = Error.stackTraceLimit;
    Error.stackTraceLimit = 0;
    try {
      return cancel.call(this, err);
    } finally {
      Error.stackTraceLimit = limit;
    }
  };
  proto[patched] = true;
  return true;
}
