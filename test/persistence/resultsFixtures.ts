import type { MicrotaskResult } from '../../src/contracts/microtask.js';

// No vitest here: child processes of the tests import these too.

/** A result with every field set, as a finished model call has. */
export function storedResult(key: string, overrides: Partial<MicrotaskResult> = {}): MicrotaskResult {
  return {
    success: true,
    taskType: 'generate',
    key,
    result: { code: 'export const a = 1;\n', notes: ['naïve «quotes»', '"escaped"\\'], score: 0.75, nested: [[1], {}] },
    durationMs: 1234.5,
    usage: { inputTokens: 120, outputTokens: 80, cacheCreationInputTokens: 0, cacheReadInputTokens: 0, calls: 1 },
    model: 'claude-test',
    stopReason: 'end_turn',
    requestId: 'req_01',
    cached: false,
    ...overrides,
  };
}

/** A failure stored for the waiting flow only (not reused): a later run's result replaces it. */
export function failedResult(key: string): MicrotaskResult {
  return {
    success: false,
    taskType: 'generate',
    key,
    error: { kind: 'unavailable', message: 'overloaded', retryable: true, status: 529 },
    fallback: { code: '' },
    durationMs: 10,
    usage: { inputTokens: 0, outputTokens: 0, cacheCreationInputTokens: 0, cacheReadInputTokens: 0, calls: 1 },
    cached: false,
  };
}
