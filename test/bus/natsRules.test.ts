import { describe, expect, it } from 'vitest';
import { subjectMatches, subjectMatchesByTokens } from '../../src/bus/natsRules.js';

// subjectMatches walks both strings in place (the in-process bus calls it for every message
// and subscription); subjectMatchesByTokens is the rule on split tokens. They must agree on
// every pair, the odd ones (empty tokens, a trailing dot, wildcards in the subject) included.

describe('subjectMatches', () => {
  it('agrees with the rule on split tokens for every pair of subjects and patterns up to three tokens', () => {
    const parts = ['', 'a', 'b', 'ab', '*', '>', 'microtask'];
    const all = new Set<string>(['', '.', '..', 'a.', '.a', 'a..b']);
    const grow = (prefix: string[], depth: number) => {
      for (const t of parts) {
        const tokens = [...prefix, t];
        all.add(tokens.join('.'));
        if (depth > 1) grow(tokens, depth - 1);
      }
    };
    grow([], 3);
    const mismatches: string[] = [];
    for (const pattern of all) {
      for (const subject of all) {
        if (subjectMatches(pattern, subject) !== subjectMatchesByTokens(pattern, subject)) mismatches.push(`${JSON.stringify(pattern)} ~ ${JSON.stringify(subject)}`);
      }
    }
    expect(all.size).toBeGreaterThan(300);
    expect(mismatches).toEqual([]);
  });

  it('matches as NATS does', () => {
    expect(subjectMatches('microtask.flow.*.events', 'microtask.flow.f-1.events')).toBe(true);
    expect(subjectMatches('microtask.flow.*.events', 'microtask.flow.f-1.done')).toBe(false);
    expect(subjectMatches('microtask.>', 'microtask.flow.f-1.events')).toBe(true);
    expect(subjectMatches('microtask.>', 'microtask')).toBe(false);
    expect(subjectMatches('microtask.flow', 'microtask.flow.x')).toBe(false);
    expect(subjectMatches('microtask.flow.x', 'microtask.flow')).toBe(false);
    expect(subjectMatches('microtask.flowx', 'microtask.flow')).toBe(false);
    expect(subjectMatches('>', 'a')).toBe(true);
    expect(subjectMatches('*', 'a.b')).toBe(false);
  });
});
