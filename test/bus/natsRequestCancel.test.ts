import { MuxSubscription, RequestOne } from '@nats-io/transport-node/lib/nats-base-client.js';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { connectNatsBus } from '../../src/bus/NatsBus.js';
import { requestCancelPatched } from '../../src/bus/natsRequestCancel.js';
import { startNatsServer } from '../../src/testing/natsServer.js';

// nats-core ends every request by cancelling it, and the cancel builds an Error (a stack
// trace) to reject the promise already settled. The patch makes that one Error without a
// stack; the errors callers see keep theirs.

afterEach(() => vi.restoreAllMocks());

describe('a NATS request ends without building a stack trace it throws away', () => {
  it('the cancel after a reply runs with no stack trace limit; failures keep their errors; the limit is restored', async () => {
    expect(requestCancelPatched).toBe(true);
    expect(typeof RequestOne.prototype.cancel).toBe('function');
    await using server = await startNatsServer();
    const bus = await connectNatsBus({ servers: [server.url] });
    try {
      // What Error.stackTraceLimit is when a request's cancel reaches the library's own code.
      const limits: number[] = [];
      const muxCancel = MuxSubscription.prototype.cancel;
      vi.spyOn(MuxSubscription.prototype, 'cancel').mockImplementation(function (this: MuxSubscription, ...args: Parameters<typeof muxCancel>) {
        limits.push(Error.stackTraceLimit);
        return muxCancel.apply(this, args);
      });
      const before = Error.stackTraceLimit;
      expect(before).toBeGreaterThan(0);

      await bus.subscribe('svc.echo', (m) => bus.respond(m, `echo ${m.string()}`));
      expect((await bus.request('svc.echo', 'one', { timeoutMs: 2_000 })).string()).toBe('echo one');
      expect((await bus.request('svc.echo', 'two', { timeoutMs: 2_000 })).string()).toBe('echo two');
      expect(limits).toEqual([0, 0]);
      expect(Error.stackTraceLimit).toBe(before);

      // Nobody listening, nobody answering: the errors are the bus's, as before.
      await expect(bus.request('svc.nobody', 'x', { timeoutMs: 2_000 })).rejects.toMatchObject({ code: 'NO_RESPONDERS' });
      await bus.subscribe('svc.silent', () => undefined);
      const timedOut = (await bus.request('svc.silent', 'x', { timeoutMs: 200 }).catch((e: unknown) => e)) as Error & { code?: string };
      expect(timedOut.code).toBe('TIMEOUT');
      expect(timedOut.stack?.split('\n').length).toBeGreaterThan(1);
      expect(Error.stackTraceLimit).toBe(before);
    } finally {
      await bus.close();
    }
  });
});
