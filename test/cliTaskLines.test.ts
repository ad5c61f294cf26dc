import { describe, expect, it } from 'vitest';
import { progressDisplay } from '../src/cli/liveProgress.js';
import { renderHistory } from '../src/cli/show.js';
import { zeroUsage } from '../src/contracts/usage.js';
import type { JournalEntry } from '../src/journal/Journal.js';

/**
 * New-user pass: a task of the user's module (src/actors/task.ts, `blocks.task`) is journaled
 * as a microtask entry whose start has no prompt. Progress and `microtask show` called it
 * "microtask rank …: done, 0 tokens" and counted it among the model calls.
 */
const flowId = 'triage-1';
const at = '2026-12-08T00:00:00.000Z';
const base = { flowId, at, kind: 'microtask' as const, actor: 'root' };
const entries: JournalEntry[] = [
  { flowId, at, kind: 'flow', phase: 'started', pattern: 'triage', status: 'running' } as JournalEntry,
  { ...base, phase: 'started', key: `${flowId}/summary/0`, taskType: 'summary', system: 's', prompt: 'In one sentence?' },
  {
    ...base,
    phase: 'finished',
    key: `${flowId}/summary/0`,
    taskType: 'summary',
    result: { success: true, taskType: 'summary', key: `${flowId}/summary/0`, result: 'Fix it.', durationMs: 12, usage: { ...zeroUsage(), inputTokens: 10, outputTokens: 5, calls: 1 }, model: 'm', cached: false },
  },
  { ...base, phase: 'started', key: `${flowId}/rank`, taskType: 'rank', data: { triaged: [] } },
  { ...base, phase: 'finished', key: `${flowId}/rank`, taskType: 'rank', result: { success: true, taskType: 'rank', key: `${flowId}/rank`, result: [], durationMs: 4, usage: zeroUsage(), cached: false } },
  { ...base, phase: 'started', key: `${flowId}/notify`, taskType: 'notify', data: {} },
  {
    ...base,
    phase: 'finished',
    key: `${flowId}/notify`,
    taskType: 'notify',
    result: { success: false, taskType: 'notify', key: `${flowId}/notify`, error: { kind: 'task_failed', message: 'smtp down', retryable: false }, durationMs: 3, usage: zeroUsage(), cached: false },
  },
];

function progressLines(): string[] {
  let text = '';
  const stream = { isTTY: false, write: (chunk: string) => ((text += chunk), true) } as unknown as NodeJS.WriteStream;
  const progress = progressDisplay({ stream, live: false, color: false });
  for (const entry of entries) progress.onEntry(entry);
  progress.done();
  return text.split('\n').map((line) => line.trim());
}

const plain = { dim: (s: string) => s, bold: (s: string) => s, red: (s: string) => s, green: (s: string) => s, yellow: (s: string) => s };

describe("a task of the user's module in the CLI's progress and history", () => {
  it('progress names it a task, with no tokens; a model call keeps its tokens', () => {
    const lines = progressLines();
    expect(lines).toContain(`task rank ${flowId}/rank: done, 4 ms`);
    expect(lines).toContain(`task notify ${flowId}/notify: failed (task_failed: smtp down), 3 ms`);
    expect(lines).toContain(`microtask summary ${flowId}/summary/0: done, 12 ms, 15 tokens (10 in, 5 out)`);
  });

  it('`microtask show` counts it apart from the microtasks and marks it a task, with no tokens or prompt', () => {
    const text = renderHistory(undefined, entries, plain, true);
    expect(text).toContain('microtasks 1 started, 1 done, 0 failed; tasks 2 run, 1 done, 1 failed; 15 tokens (10 in, 5 out)');
    const rank = text.split('\n').filter((line) => line.includes(`${flowId}/rank`));
    expect(rank).toEqual([expect.stringMatching(/▸ task rank \S+$/), expect.stringMatching(/✓ task rank \S+ {2}4 ms$/)]);
    expect(text).not.toMatch(/rank.*tokens/);
    // Its input, not an empty prompt.
    expect(text).toContain('input: {"triaged":[]}');
  });
});
