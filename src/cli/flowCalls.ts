import type { JournalEntry } from '../journal/Journal.js';

type MicrotaskEntry = Extract<JournalEntry, { kind: 'microtask' }>;

/**
 * The journal has one kind of entry for a model call and for a task of the user's module
 * (src/actors/task.ts): a model call's start has a prompt, a task's does not. A person
 * reads them apart (a task spends no tokens), so the CLI tells them apart here.
 */
export const startIsTask = (entry: MicrotaskEntry) => entry.phase === 'started' && entry.prompt === undefined;

/** A failure that says the model server could not be reached (or, the circuit open, was not tried for that). */
const unreachable = (message: string) => /^(not tried: )?cannot reach the model server\b/.test(message);

/**
 * What the model calls of one flow came to, from its journal entries as they come: how many
 * the model answered, how many found no answer on a cassette, how many could not reach the
 * model server (and the first such message). The end of `run`, `build` and `resume` reads
 * it to say why a flow ran on fallbacks, which its output may not say (a flow of the user's
 * keeps only the fallback).
 */
export class FlowCalls {
  private readonly tasks = new Set<string>();
  answered = 0;
  cassetteMisses = 0;
  unreachable = 0;
  unreachableMessage: string | undefined;

  /** Whether this finished (or started) entry is a task of the user's module, not a model call. */
  isTask(entry: MicrotaskEntry): boolean {
    return this.tasks.has(`${entry.actor}|${entry.key}`);
  }

  onEntry(entry: JournalEntry): void {
    if (entry.kind !== 'microtask') return;
    const id = `${entry.actor}|${entry.key}`;
    if (entry.phase === 'started') {
      if (startIsTask(entry)) this.tasks.add(id);
      else this.tasks.delete(id);
      return;
    }
    const r = entry.result;
    if (!r || this.tasks.has(id)) return;
    if (r.success) {
      if (!r.cached) this.answered++;
    } else if (r.error?.kind === 'cassette_miss') this.cassetteMisses++;
    else if (r.error?.kind === 'unavailable' && unreachable(r.error.message)) {
      this.unreachable++;
      // The first is the one that went to the network; later ones say "not tried".
      this.unreachableMessage ??= r.error.message;
    }
  }
}

/**
 * A flow whose model calls all failed to reach the model server (it ran on fallbacks): the
 * cause and what to check, in one line, said before how the flow ended (its reason nests
 * the cause deep, after many lines of progress). `where` is the model as the runtime describes it
 * (`claude-… at http://127.0.0.1:1`), undefined when a daemon made the calls.
 */
export function unreachableCause(calls: FlowCalls, where: string | undefined): string | undefined {
  if (calls.answered > 0 || calls.unreachable === 0) return undefined;
  const url = where && / at (\w+:\/\/[^\s,]+)/.exec(where)?.[1];
  const server = url ? `the model server at ${url}` : where?.endsWith('the Anthropic API') ? 'the Anthropic API' : where ? `the model server (${where})` : "the daemon's model server";
  const detail = (calls.unreachableMessage ?? '').replace(/^(not tried: )?cannot reach the model server: ?/, '').trim();
  const check = !where
    ? "check the daemon's ANTHROPIC_BASE_URL and its network"
    : url && !url.includes('api.anthropic.com')
      ? 'check that ANTHROPIC_BASE_URL names a server that is running, or unset it for the Anthropic API'
      : 'check the network (a proxy or firewall in the way), or set ANTHROPIC_BASE_URL to a server you can reach';
  return `microtask: no model call was answered: cannot reach ${server}${detail ? ` (${detail})` : ''}; ${check}, then run it again`;
}
