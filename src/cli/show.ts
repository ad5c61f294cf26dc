import type { JournalEntry } from '../journal/Journal.js';
import type { FlowSnapshotRecord } from '../persistence/SnapshotStore.js';
import { FlowCalls } from './flowCalls.js';
import { formatMs, formatState, formatTokens, visibleControls } from './format.js';

type Colors = { dim(s: string): string; bold(s: string): string; red(s: string): string; green(s: string): string; yellow(s: string): string };

/**
 * The summary of a flow's microtasks: how many, how they ended, tokens and model time; and
 * apart, the tasks of the user's module it ran (steps of its code: no model, no tokens).
 */
export function microtaskTotals(entries: readonly JournalEntry[]) {
  const totals = { started: 0, done: 0, failed: 0, cached: 0, inputTokens: 0, outputTokens: 0, modelMs: 0, tasks: { started: 0, done: 0, failed: 0 } };
  const calls = new FlowCalls();
  for (const e of entries) {
    if (e.kind !== 'microtask') continue;
    calls.onEntry(e);
    if (calls.isTask(e)) {
      if (e.phase === 'started') totals.tasks.started++;
      else if (e.result?.success) totals.tasks.done++;
      else totals.tasks.failed++;
      continue;
    }
    if (e.phase === 'started') totals.started++;
    else if (e.result) {
      if (e.result.success) totals.done++;
      else totals.failed++;
      if (e.result.cached) totals.cached++;
      totals.inputTokens += e.result.usage.inputTokens;
      totals.outputTokens += e.result.usage.outputTokens;
      totals.modelMs += e.result.durationMs;
    }
  }
  return totals;
}

const oneLine = (text: string, max = 100) => {
  // Prompts and answers come from clients and models: their escape sequences are shown, not obeyed.
  const flat = visibleControls(text.replace(/\s+/g, ' ').trim());
  return flat.length > max ? `${flat.slice(0, max - 1)}…` : flat;
};

/**
 * A flow's history for `microtask show`: its record, then each transition and each
 * microtask in order, with times since the start, tokens and durations.
 */
export function renderHistory(record: FlowSnapshotRecord | undefined, entries: readonly JournalEntry[], c: Colors, verbose: boolean): string {
  const lines: string[] = [];
  const first = entries[0];
  const flowId = record?.flowId ?? first?.flowId ?? '?';
  const pattern = record?.pattern ?? (first?.kind === 'flow' ? first.pattern : '?');
  lines.push(`${c.bold(flowId)}  ${pattern}`);
  if (record) {
    const status = record.status === 'done' ? c.green(record.status) : record.status === 'running' ? c.yellow(record.status) : c.red(record.status);
    lines.push(`status   ${status}${record.error ? `: ${record.error.code} ${record.error.message}` : ''}`);
    lines.push(`state    ${formatState(record.state)}`);
    lines.push(`updated  ${record.updatedAt}${record.owner ? `  (owner ${record.owner})` : ''}`);
    const outcome = (record.output as { status?: string; reason?: string } | undefined);
    if (outcome?.status) lines.push(`output   ${outcome.status}${outcome.reason ? ` (${outcome.reason})` : ''}`);
  } else {
    lines.push(c.dim('(no snapshot record: pruned, or kept elsewhere; the journal follows)'));
  }
  const t = microtaskTotals(entries);
  lines.push(
    `microtasks ${t.started} started, ${t.done} done, ${t.failed} failed${t.cached ? `, ${t.cached} from stored results` : ''}; ` +
      (t.tasks.started ? `tasks ${t.tasks.started} run, ${t.tasks.done} done, ${t.tasks.failed} failed; ` : '') +
      `${formatTokens(t.inputTokens, t.outputTokens)}; model time ${formatMs(t.modelMs)}`,
  );
  if (entries.length === 0) {
    lines.push(c.dim('no history recorded for this flow (it ran before the journal existed, or its journal was pruned)'));
    return lines.join('\n');
  }
  lines.push('');
  const t0 = Date.parse(entries[0]!.at);
  const since = (at: string) => c.dim(`+${((Date.parse(at) - t0) / 1000).toFixed(3)}s`.padStart(10));
  const calls = new FlowCalls();
  for (const e of entries) {
    if (e.kind === 'microtask') calls.onEntry(e);
    switch (e.kind) {
      case 'flow':
        lines.push(`${since(e.at)}  ${c.bold(`flow ${e.phase}`)}${e.phase === 'ended' ? ` ${e.status}${e.error ? `: ${e.error.message}` : ''}` : ''}`);
        break;
      case 'transition':
        lines.push(`${since(e.at)}  ${e.machine}${e.actor === 'root' ? '' : ` ${c.dim(e.actor)}`} → ${c.yellow(formatState(e.state))}  ${c.dim(`on ${e.event}`)}`);
        break;
      case 'step':
        // Saved snapshots: the points time travel steps through (the inspector shows them).
        if (verbose) lines.push(`${since(e.at)}  ${c.dim(`snapshot ${e.step} saved (root: ${formatState(e.rootState)})`)}`);
        break;
      case 'microtask': {
        const task = calls.isTask(e);
        const name = `${task ? 'task ' : ''}${e.taskType}`;
        if (e.phase === 'started') {
          lines.push(`${since(e.at)}    ${c.dim('▸')} ${name} ${c.dim(e.key)}`);
          if (verbose && task) {
            if (e.data !== undefined) lines.push(`              input: ${oneLine(JSON.stringify(e.data) ?? '', 200)}`);
          } else if (verbose) {
            if (e.system) lines.push(`              system: ${oneLine(e.system, 200)}`);
            lines.push(`              prompt: ${oneLine(e.prompt ?? '', 200)}`);
          }
          break;
        }
        const r = e.result;
        if (!r) {
          lines.push(`${since(e.at)}    ${c.red('✗')} ${name} ${c.dim(e.key)} ended without a result envelope`);
          break;
        }
        // A task calls no model: its time only (a stored one was not run again).
        const cost = task
          ? r.cached
            ? 'stored result, not run again'
            : formatMs(r.durationMs)
          : `${formatMs(r.durationMs)}, ${r.cached ? 'stored result, no call' : !r.success && r.usage.calls === 0 ? 'no call made' : formatTokens(r.usage.inputTokens, r.usage.outputTokens)}`;
        const mark = r.success ? c.green('✓') : c.red('✗');
        const why = r.success ? '' : `  ${c.red(`${r.error?.kind}: ${oneLine(r.error?.message ?? '', 120)}`)}${r.fallback !== undefined ? ' (fallback used)' : ''}`;
        lines.push(`${since(e.at)}    ${mark} ${name} ${c.dim(e.key)}  ${cost}${r.model ? `, ${r.model}` : ''}${why}`);
        if (verbose && r.success) {
          lines.push(`              answer: ${oneLine(typeof r.result === 'string' ? r.result : JSON.stringify(r.result) ?? '', 200)}`);
        }
        break;
      }
    }
  }
  return lines.join('\n');
}
