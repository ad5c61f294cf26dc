import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { MAX_MICROTASK_TIMEOUT_MS, MAX_TOKENS } from '../src/contracts/microtask.js';
import { describeIssues } from '../src/actors/model/prompt.js';
import { loadConfig } from '../src/config.js';
import { AdjustmentsSchema } from '../src/contracts/answers.js';
import { patternInputSchemas, patternNames } from '../src/patterns/index.js';

const timeoutRange = `a whole number of milliseconds between 1 and ${MAX_MICROTASK_TIMEOUT_MS} (10 minutes)`;
const tokensRange = `a whole number of tokens between 1 and ${MAX_TOKENS}`;
const spec = { taskType: 'summarize', system: 's', prompt: 'p' };

/** Every field named timeoutMs or maxTokens in a JSON schema, with its path; a budget's maxTokens (a total) aside. */
function boundedFields(schema: unknown, path = ''): Array<{ path: string; maximum: unknown }> {
  if (Array.isArray(schema)) return schema.flatMap((s, i) => boundedFields(s, `${path}[${i}]`));
  if (!schema || typeof schema !== 'object') return [];
  const found: Array<{ path: string; maximum: unknown }> = [];
  for (const [name, value] of Object.entries(schema as Record<string, unknown>)) {
    if (name === 'properties' && value && typeof value === 'object') {
      for (const [field, fieldSchema] of Object.entries(value as Record<string, unknown>)) {
        if ((field === 'timeoutMs' || field === 'maxTokens') && !path.endsWith('.budget')) {
          found.push({ path: `${path}.${field}`, maximum: (fieldSchema as { maximum?: unknown }).maximum });
        }
        found.push(...boundedFields(fieldSchema, `${path}.${field}`));
      }
    } else found.push(...boundedFields(value, path));
  }
  return found;
}

// Issue 11: timeoutMs 2^40 and maxTokens 1e9 were bounded in the microtask's own input only;
// every pattern's task specs (and the metacognitive analysis) took them, to fail later.
describe('timeoutMs and maxTokens are bounded in every schema that takes them', () => {
  it('every pattern input: each timeoutMs and maxTokens field has the same maximum', () => {
    const fields = patternNames.flatMap((name) =>
      boundedFields(z.toJSONSchema(patternInputSchemas[name], { io: 'input', unrepresentable: 'any' })).map((f) => ({ ...f, path: `${name}${f.path}` })),
    );
    // The task specs of all patterns, the metacognitive analysis, the tool builder's own timeout.
    expect(fields.map((f) => f.path)).toEqual(expect.arrayContaining(['metacognitive.analyze.timeoutMs', 'parallel.tasks.timeoutMs', 'feedback-loop.verify.maxTokens', 'tool-builder.timeoutMs']));
    for (const field of fields) {
      expect(field, field.path).toEqual({ path: field.path, maximum: field.path.endsWith('timeoutMs') ? MAX_MICROTASK_TIMEOUT_MS : MAX_TOKENS });
    }
  });

  it('a flow start with timeoutMs 2^40 or maxTokens 1e9 in a task spec is refused at the edge, saying the range', () => {
    const refusal = (pattern: keyof typeof patternInputSchemas, input: unknown) => {
      const parsed = patternInputSchemas[pattern].safeParse(input);
      expect(parsed.success, pattern).toBe(false);
      return describeIssues(parsed.error!);
    };
    expect(refusal('parallel', { tasks: [spec, { ...spec, timeoutMs: 2 ** 40 }], concurrency: 2 })).toBe(`- tasks.1.timeoutMs: ${timeoutRange}`);
    expect(refusal('incremental', { items: [1], task: { ...spec, maxTokens: 1e9 } })).toBe(`- task.maxTokens: ${tokensRange}`);
    expect(refusal('feedback-loop', { task: spec, verify: { ...spec, timeoutMs: 0 }, threshold: 0.8, maxIterations: 3 })).toBe(`- verify.timeoutMs: ${timeoutRange}`);
    expect(refusal('metacognitive', { task: spec, analyze: { timeoutMs: 2 ** 40 }, maxAttempts: 2 })).toBe(`- analyze.timeoutMs: ${timeoutRange}`);
    expect(refusal('reentrant', { task: spec, review: { ...spec, maxTokens: 1.5 }, input: 'x', maxRevisions: 1 })).toBe(`- review.maxTokens: ${tokensRange}`);
    // The bounds themselves are taken.
    expect(patternInputSchemas.parallel.safeParse({ tasks: [{ ...spec, timeoutMs: MAX_MICROTASK_TIMEOUT_MS, maxTokens: MAX_TOKENS }], concurrency: 1 }).success).toBe(true);
  });

  it("a model's suggested timeout and the configuration use the same bounds", () => {
    expect(AdjustmentsSchema.safeParse({ timeoutMs: MAX_MICROTASK_TIMEOUT_MS }).success).toBe(true);
    expect(AdjustmentsSchema.safeParse({ timeoutMs: MAX_MICROTASK_TIMEOUT_MS + 1 }).success).toBe(false);
    expect(() => loadConfig({ MICROTASK_TIMEOUT_MS: String(MAX_MICROTASK_TIMEOUT_MS + 1) })).toThrow(String(MAX_MICROTASK_TIMEOUT_MS));
    expect(() => loadConfig({ MICROTASK_MAX_TOKENS: String(MAX_TOKENS + 1) })).toThrow(String(MAX_TOKENS));
    expect(loadConfig({ MICROTASK_TIMEOUT_MS: String(MAX_MICROTASK_TIMEOUT_MS), MICROTASK_MAX_TOKENS: String(MAX_TOKENS) })).toMatchObject({
      MICROTASK_TIMEOUT_MS: MAX_MICROTASK_TIMEOUT_MS,
      MICROTASK_MAX_TOKENS: MAX_TOKENS,
    });
  });
});
