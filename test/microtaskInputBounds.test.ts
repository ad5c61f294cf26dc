import { describe, expect, it } from 'vitest';
import { MicrotaskRunner } from '../src/actors/microtask.js';
import { MAX_MICROTASK_TIMEOUT_MS, MAX_TOKENS, MicrotaskInputSchema } from '../src/contracts/microtask.js';
import { describeIssues } from '../src/actors/model/prompt.js';
import { ScriptedModel } from '../src/actors/model/ScriptedModel.js';
import { MemoryResultsStore } from '../src/actors/ResultsStore.js';
import { patternInputSchemas } from '../src/patterns/index.js';

const task = { taskType: 'summarize', key: 'flow-b/summarize/0', system: 's', prompt: 'p' };

/** The lines the daemon answers INVALID_INPUT with, for a `flow.start.microtask` payload. */
function refusal(input: unknown): string {
  const parsed = patternInputSchemas.microtask.safeParse(input);
  expect(parsed.success).toBe(false);
  return describeIssues(parsed.error!);
}

// Issue 11: timeoutMs 2^40 and maxTokens 1e9 were accepted, then failed oddly (a setTimeout
// that overflows fires at once; the SDK refuses a large max_tokens without streaming).
describe('microtask input bounds', () => {
  it('refuses a timeoutMs of 2^40 at the edge, saying the range', () => {
    expect(refusal({ ...task, timeoutMs: 2 ** 40 })).toBe(`- timeoutMs: a whole number of milliseconds between 1 and ${MAX_MICROTASK_TIMEOUT_MS} (10 minutes)`);
    expect(refusal({ ...task, timeoutMs: 1.5 })).toContain('- timeoutMs: a whole number of milliseconds');
    expect(refusal({ ...task, timeoutMs: 0 })).toContain('- timeoutMs: a whole number of milliseconds');
  });

  it('refuses a maxTokens of 1e9 at the edge, saying the range', () => {
    expect(refusal({ ...task, maxTokens: 1e9 })).toBe(`- maxTokens: a whole number of tokens between 1 and ${MAX_TOKENS}`);
    expect(refusal({ ...task, maxTokens: -3 })).toContain('- maxTokens: a whole number of tokens');
  });

  it('accepts the bounds themselves', () => {
    expect(MicrotaskInputSchema.safeParse({ ...task, timeoutMs: MAX_MICROTASK_TIMEOUT_MS, maxTokens: MAX_TOKENS }).success).toBe(true);
    expect(MAX_MICROTASK_TIMEOUT_MS).toBeLessThan(2 ** 31 - 1); // setTimeout's limit
  });

  it('the runner refuses such an input before any model call: invalid_request, the same message', async () => {
    const model = new ScriptedModel(['never']);
    const runner = new MicrotaskRunner({ model, results: new MemoryResultsStore() });
    const result = await runner.run({ ...task, timeoutMs: 2 ** 40, maxTokens: 1e9 });
    expect(result.error).toMatchObject({ kind: 'invalid_request', retryable: false });
    expect(result.error?.message).toContain('timeoutMs: a whole number of milliseconds between 1 and 600000');
    expect(result.error?.message).toContain('maxTokens: a whole number of tokens between 1 and 128000');
    expect(model.calls).toHaveLength(0);
  });
});
