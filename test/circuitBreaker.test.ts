import { describe, expect, it } from 'vitest';
import { CircuitBreaker } from '../src/actors/CircuitBreaker.js';
import { MicrotaskRunner } from '../src/actors/microtask.js';
import { AnthropicModel } from '../src/actors/model/AnthropicModel.js';
import { ModelError, type ModelErrorKind } from '../src/actors/model/ModelError.js';
import { MemoryResultsStore } from '../src/actors/ResultsStore.js';
import { reply, startFakeAnthropic } from '../src/testing/fakeAnthropic.js';

const HOUR = 3_600_000;
const rateLimited = (retryAfterMs?: number) => new ModelError('rate_limited', 'rate limited (429)', { status: 429, retryAfterMs });
const failed = (kind: ModelErrorKind) => new ModelError(kind, kind);

function clocked(options: { cooldownMs?: number; maxOpenMs?: number; probeLeaseMs?: number } = {}) {
  const clock = { now: 1_000_000 };
  const breaker = new CircuitBreaker({ ...options, now: () => clock.now });
  return { clock, breaker };
}

// Issue 11: one 429 with retry-after 3600 made every later call fail for an hour, with no call let through.
describe('the circuit breaker', () => {
  it('caps the open time: a retry-after of an hour opens it for the cap only (the cooldown by default)', () => {
    const { clock, breaker } = clocked({ cooldownMs: 500 });
    breaker.record(rateLimited(HOUR));
    expect(breaker.check()).toMatchObject({ kind: 'rate_limited', retryable: true });
    clock.now += 499;
    expect(breaker.check()).toBeDefined();
    clock.now += 1;
    expect(breaker.check()).toBeUndefined();
  });

  it('honours a retry-after below the cap, and a cap given beside the cooldown', () => {
    const short = clocked({ cooldownMs: 15_000 });
    short.breaker.record(rateLimited(2_000));
    short.clock.now += 2_000;
    expect(short.breaker.check()).toBeUndefined();

    const capped = clocked({ cooldownMs: 500, maxOpenMs: 30_000 });
    capped.breaker.record(rateLimited(HOUR));
    capped.clock.now += 29_999;
    expect(capped.breaker.check()).toBeDefined();
    capped.clock.now += 1;
    expect(capped.breaker.check()).toBeUndefined();
  });

  it('tells the caller when to come back while open (a queue retries then), never beyond the cap', () => {
    const { clock, breaker } = clocked({ cooldownMs: 500 });
    breaker.record(rateLimited(HOUR));
    clock.now += 200;
    expect(breaker.check()).toMatchObject({ retryAfterMs: 300 });
  });

  it('half-open: after the open time exactly one probe goes through, the others fail fast', () => {
    const { clock, breaker } = clocked({ cooldownMs: 1_000 });
    breaker.record(failed('unavailable'));
    clock.now += 1_000;
    expect(breaker.check()).toBeUndefined(); // the probe
    for (let i = 0; i < 5; i++) {
      const refused = breaker.check();
      expect(refused).toMatchObject({ kind: 'unavailable', retryable: true });
      expect(refused?.message).toMatch(/^not tried: .*probe/);
    }
  });

  it('the probe succeeding closes it: every call goes through', () => {
    const { clock, breaker } = clocked({ cooldownMs: 1_000 });
    breaker.record(failed('unavailable'));
    clock.now += 1_000;
    expect(breaker.check()).toBeUndefined();
    breaker.reset();
    for (let i = 0; i < 3; i++) expect(breaker.check()).toBeUndefined();
  });

  it('a probe the server answered with a failure of the request (invalid output, refusal) closes it too', () => {
    const { clock, breaker } = clocked({ cooldownMs: 1_000 });
    breaker.record(failed('unavailable'));
    clock.now += 1_000;
    expect(breaker.check()).toBeUndefined();
    breaker.record(failed('invalid_output'));
    expect(breaker.check()).toBeUndefined();
    expect(breaker.check()).toBeUndefined();
  });

  it('the probe failing reopens it for another open time', () => {
    const { clock, breaker } = clocked({ cooldownMs: 1_000 });
    breaker.record(failed('unavailable'));
    clock.now += 1_000;
    expect(breaker.check()).toBeUndefined();
    breaker.record(rateLimited(HOUR));
    expect(breaker.check()?.message).toMatch(/^not tried: rate limited/);
    clock.now += 999;
    expect(breaker.check()).toBeDefined();
    clock.now += 1;
    expect(breaker.check()).toBeUndefined(); // the next probe
    expect(breaker.check()).toBeDefined();
  });

  it('a probe cancelled or timed out tells nothing: its slot is freed for the next call', () => {
    for (const kind of ['cancelled', 'timeout'] as const) {
      const { clock, breaker } = clocked({ cooldownMs: 1_000 });
      breaker.record(failed('unavailable'));
      clock.now += 1_000;
      expect(breaker.check()).toBeUndefined();
      breaker.record(failed(kind));
      expect(breaker.check(), kind).toBeUndefined(); // a new probe
      expect(breaker.check(), kind).toBeDefined();
    }
  });

  it('a probe whose end is never reported holds its slot only until its lease ends', () => {
    const { clock, breaker } = clocked({ cooldownMs: 1_000, probeLeaseMs: 60_000 });
    breaker.record(failed('unavailable'));
    clock.now += 1_000;
    expect(breaker.check()).toBeUndefined();
    clock.now += 59_999;
    expect(breaker.check()).toBeDefined();
    clock.now += 1;
    expect(breaker.check()).toBeUndefined();
    expect(breaker.check()).toBeDefined();
  });

  it('a refused key stays refused: no probe, no reset', () => {
    const { clock, breaker } = clocked({ cooldownMs: 1_000 });
    breaker.record(failed('auth'));
    clock.now += HOUR;
    expect(breaker.check()).toMatchObject({ kind: 'auth', retryable: false });
    breaker.reset();
    expect(breaker.check()).toMatchObject({ kind: 'auth' });
  });

  it('keeps its first form: new CircuitBreaker(cooldownMs, now)', () => {
    let now = 0;
    const breaker = new CircuitBreaker(500, () => now);
    breaker.record(rateLimited(HOUR));
    now += 500;
    expect(breaker.check()).toBeUndefined();
  });
});

describe('the circuit breaker over the real SDK and HTTP', () => {
  it('after a 429 with retry-after 3600, calls resume within the cap, one probe at a time', async () => {
    let release: () => void = () => undefined;
    const probeAnswered = new Promise<void>((resolve) => (release = resolve));
    await using server = await startFakeAnthropic({
      replies: async (request) => {
        if (request.index === 0) return reply.rateLimited(3600);
        // The probe: held until the test has seen that no other call reaches the server meanwhile.
        if (request.index === 1) await probeAnswered;
        return reply.text(`answer ${request.index}`);
      },
    });
    // As a worker has it: the model without retries, the breaker's cooldown of 0.5 s.
    const runner = new MicrotaskRunner({
      model: new AnthropicModel({ apiKey: 'k', baseURL: server.url, model: 'm', maxRetries: 0 }),
      results: new MemoryResultsStore(),
      breaker: new CircuitBreaker(500),
    });
    const task = (n: number) => ({ taskType: 'summarize', key: `flow-cb/summarize/${n}`, system: 's', prompt: `p${n}` });

    const first = await runner.run(task(0));
    expect(first.error).toMatchObject({ kind: 'rate_limited', retryAfterMs: 3_600_000 });
    const whileOpen = await runner.run(task(1));
    expect(whileOpen).toMatchObject({ success: false, usage: { calls: 0 }, error: { kind: 'rate_limited' } });
    expect(whileOpen.error?.retryAfterMs).toBeLessThanOrEqual(500);
    expect(server.requests).toHaveLength(1);

    await new Promise((r) => setTimeout(r, 550));
    const probe = runner.run(task(2));
    const others = await Promise.all([3, 4, 5].map((n) => runner.run(task(n))));
    for (const other of others) expect(other).toMatchObject({ success: false, usage: { calls: 0 }, error: { kind: 'rate_limited' } });
    await new Promise((r) => setTimeout(r, 100));
    expect(server.requests).toHaveLength(2); // the 429, and the probe only

    release();
    expect(await probe).toMatchObject({ success: true, result: 'answer 1' });
    const after = await Promise.all([6, 7, 8].map((n) => runner.run(task(n))));
    expect(after.map((r) => r.success)).toEqual([true, true, true]);
    expect(server.requests).toHaveLength(5);
  });
});
