import { describe, expect, it } from 'vitest';
import { depthExceeds, JsonInputError, MAX_JSON_DEPTH, parseJsonInput } from '../src/jsonInput.js';

const arrays = (depth: number) => `${'['.repeat(depth)}${']'.repeat(depth)}`;
const objects = (depth: number) => `${'{"a":'.repeat(depth)}1${'}'.repeat(depth)}`;
const refusal = (text: string | Uint8Array) => {
  try {
    parseJsonInput(text);
  } catch (e) {
    return e instanceof JsonInputError ? { code: e.code, message: e.message } : e;
  }
  return undefined;
};

// The one reader of outside JSON (daemon requests, CLI input files): issue 11.
describe('parseJsonInput', () => {
  it('takes arrays and objects nested up to the limit, and refuses one level more', () => {
    expect(MAX_JSON_DEPTH).toBe(64);
    for (const nest of [arrays, objects]) {
      expect(() => parseJsonInput(nest(64))).not.toThrow();
      expect(refusal(nest(65))).toEqual({ code: 'TOO_DEEP', message: 'is nested deeper than 64 levels of arrays and objects (the limit)' });
    }
    // Mixed, and deep enough to overflow any recursive walk.
    expect(refusal(`${'[{"a":'.repeat(50_000)}1${'}]'.repeat(50_000)}`)).toMatchObject({ code: 'TOO_DEEP' });
    // Wide is not deep.
    expect(() => parseJsonInput(JSON.stringify({ list: Array.from({ length: 10_000 }, (_, i) => ({ i, tags: [i] })) }))).not.toThrow();
  });

  it('drops one leading byte order mark, from a string or from bytes', () => {
    expect(parseJsonInput('\uFEFF{"a":1}')).toEqual({ a: 1 });
    expect(parseJsonInput(new TextEncoder().encode('\uFEFF{"a":1}'))).toEqual({ a: 1 });
    expect(refusal('\uFEFF\uFEFF{"a":1}')).toMatchObject({ code: 'NOT_JSON' });
    expect(refusal('{"a":')).toMatchObject({ code: 'NOT_JSON', message: expect.stringMatching(/^is not JSON: /) });
  });

  it('counts depth in arrays and objects only', () => {
    expect(depthExceeds('x', 0)).toBe(false);
    expect(depthExceeds([], 0)).toBe(true);
    expect(depthExceeds([[1], { a: [2] }], 2)).toBe(true);
    expect(depthExceeds([[1], { a: 2 }], 2)).toBe(false);
  });
});
