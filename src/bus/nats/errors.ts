import { errors } from '@nats-io/transport-node';
import { JetStreamApiError } from '@nats-io/jetstream';
import { BusError } from '../Bus.js';
import { isValidSubject } from '../natsRules.js';

/** JetStream API error codes the parts of the bus tell apart. */
export const SUBJECTS_OVERLAP = 10065;
export const WRONG_LAST_SEQUENCE = 10071;

/**
 * Turns a client error into a BusError where one fits; others pass through. `closed`: the
 * bus was closed by its owner (a closed connection is then CLOSED, not CONNECTION).
 */
export function toBusError(e: unknown, what: string, bus: { closed: boolean; servers: string[] }, timeoutMs?: number): Error {
  if (e instanceof BusError) return e;
  const err = e instanceof Error ? e : new Error(String(e));
  const cause = (err as { cause?: unknown }).cause;
  if (err instanceof errors.NoRespondersError || (err instanceof errors.RequestError && err.isNoResponders())) {
    return new BusError('NO_RESPONDERS', `cannot ${what}: nobody is listening`, { cause: err });
  }
  if (err instanceof errors.TimeoutError || cause instanceof errors.TimeoutError) {
    const within = timeoutMs === undefined ? 'in time' : `within ${timeoutMs} ms`;
    return new BusError('TIMEOUT', `cannot ${what}: no answer ${within}`, { cause: err });
  }
  if (err instanceof errors.ClosedConnectionError || err instanceof errors.DrainingConnectionError) {
    return new BusError(bus.closed ? 'CLOSED' : 'CONNECTION', `cannot ${what}: the NATS connection is closed`, { cause: err });
  }
  if (err instanceof errors.InvalidSubjectError || err instanceof errors.InvalidArgumentError) {
    return new BusError('INVALID_NAME', `cannot ${what}: ${err.message}`, { cause: err });
  }
  if (err instanceof errors.ConnectionError || (err instanceof errors.RequestError && /disconnect|closed/.test(err.message))) {
    if (bus.closed) return new BusError('CLOSED', `cannot ${what}: the bus was closed`, { cause: err });
    return new BusError('CONNECTION', `cannot ${what}: lost the connection to NATS at ${bus.servers.join(', ')} (${err.message})`, {
      cause: err,
    });
  }
  return err;
}

export function assertSubject(subject: string, wildcards: boolean): void {
  if (!isValidSubject(subject, { wildcards })) {
    throw new BusError(
      'INVALID_NAME',
      `invalid subject "${subject}": use dot-separated tokens without spaces` +
        (wildcards ? ', with "*" for one token and ">" only at the end' : ' and without wildcards'),
    );
  }
}

export function isNotFound(e: unknown): boolean {
  return e instanceof JetStreamApiError && e.status === 404;
}
