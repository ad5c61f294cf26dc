import { createLogUpdate } from 'log-update';
import pc from 'picocolors';
import type { JournalEntry } from '../journal/Journal.js';
import { FlowCalls } from './flowCalls.js';
import { formatActorState, formatState, formatTokens, visibleControls } from './format.js';

/** Child machines in the live block: the latest ones that moved (a tool build has dozens). */
const MAX_CHILDREN_SHOWN = 6;

type MicrotaskEntry = Extract<JournalEntry, { kind: 'microtask' }>;

export interface ProgressOptions {
  /** Where it goes: stderr (stdout is for data). */
  stream?: NodeJS.WriteStream;
  /** Redraw one live block (a terminal) or print a line per change (a pipe, a log file). */
  live?: boolean;
  color?: boolean;
  /**
   * The command prints how the flow ended itself (run, build, resume): the progress's end
   * line gives the status only, so a cause (a refused key) is said once, not twice.
   */
  endSaidByCaller?: boolean;
}

export interface Progress {
  /** Takes the flow's journal entries, in order. */
  onEntry(entry: JournalEntry): void;
  /** Leaves the last picture (live) and stops redrawing. */
  done(): void;
}

/** Colors on a terminal unless NO_COLOR is set (https://no-color.org). */
export const colorWanted = (stream: NodeJS.WriteStream = process.stderr) =>
  Boolean(stream.isTTY) && !('NO_COLOR' in process.env && process.env.NO_COLOR !== '') && process.env.TERM !== 'dumb';

/**
 * The progress of one flow, from its journal: each machine's state, the microtasks in
 * flight with their time so far, and the finished ones with tokens and durations. On a
 * terminal it is one block redrawn in place; elsewhere a line per change, which a script
 * or a log file can read.
 */
export function progressDisplay(options: ProgressOptions = {}): Progress {
  const stream = options.stream ?? process.stderr;
  // A terminal that reports no size (some CI ptys) gets lines: a redrawn block would not fit.
  const live = options.live ?? (Boolean(stream.isTTY) && (stream.rows ?? 0) > 0);
  const c = pc.createColors(options.color ?? colorWanted(stream));
  const write = (line: string) => stream.write(`${line}\n`);

  const machines = new Map<string, { machine: string; state: string }>();
  const inFlight = new Map<string, { entry: MicrotaskEntry; since: number; task: boolean }>();
  const totals = { done: 0, failed: 0, cached: 0, inputTokens: 0, outputTokens: 0, tasksDone: 0, tasksFailed: 0 };
  // Which entries are tasks of the user's module: steps of its code, no model call, no tokens.
  const calls = new FlowCalls();
  let header = '';
  let status = 'running';
  const started = Date.now();

  const depth = (actor: string) => (actor === 'root' ? 0 : actor.split('/').length);

  const render = () => {
    const lines = [`${c.bold(header)} ${status === 'running' ? c.cyan(status) : status === 'done' ? c.green(status) : c.red(status)} ${c.dim(`${((Date.now() - started) / 1000).toFixed(1)}s`)}`];
    const children = [...machines].filter(([actor]) => actor !== 'root');
    const root = machines.get('root');
    const shown = [...(root ? [['root', root] as const] : []), ...children.slice(-MAX_CHILDREN_SHOWN)];
    for (const [actor, { machine, state }] of shown) lines.push(`${'  '.repeat(depth(actor) + 1)}${formatActorState(actor, machine, c.yellow(state))}`);
    const frame = '⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏'[Math.floor(Date.now() / 100) % 10];
    for (const { entry, since, task } of inFlight.values()) {
      lines.push(`  ${c.cyan(frame ?? '*')} ${task ? 'task ' : ''}${visibleControls(entry.taskType)} ${c.dim(visibleControls(entry.key))} ${c.dim(`${((Date.now() - since) / 1000).toFixed(1)}s`)}`);
    }
    const tasks = totals.tasksDone + totals.tasksFailed;
    lines.push(
      `  ${c.green(`${totals.done} microtasks done`)}${totals.failed ? `, ${c.red(`${totals.failed} failed`)}` : ''}${totals.cached ? `, ${totals.cached} from stored results` : ''}; ` +
        `${tasks ? `${totals.tasksDone} task${totals.tasksDone === 1 ? '' : 's'} done${totals.tasksFailed ? `, ${c.red(`${totals.tasksFailed} failed`)}` : ''}; ` : ''}` +
        formatTokens(totals.inputTokens, totals.outputTokens),
    );
    return lines.join('\n');
  };

  const logUpdate = live ? createLogUpdate(stream, { showCursor: true }) : undefined;
  const timer = live ? setInterval(() => logUpdate!(render()), 100) : undefined;
  timer?.unref();

  return {
    onEntry(entry) {
      switch (entry.kind) {
        case 'flow':
          header = `${entry.pattern} ${entry.flowId}`;
          status = entry.status;
          if (!live) {
            const cause = entry.error && !options.endSaidByCaller ? `: ${visibleControls(entry.error.message)}` : '';
            write(`${header}: ${entry.phase}${entry.phase === 'ended' ? ` (${entry.status}${cause})` : ''}`);
          }
          break;
        case 'step':
          break;
        case 'transition': {
          const state = formatState(entry.state);
          if (machines.get(entry.actor)?.state === state) break;
          // The most recently moved last: the live block shows the root and the latest few.
          machines.delete(entry.actor);
          machines.set(entry.actor, { machine: entry.machine, state });
          if (!live) write(`${'  '.repeat(depth(entry.actor) + 1)}${formatActorState(entry.actor, entry.machine, state)}`);
          break;
        }
        case 'microtask': {
          calls.onEntry(entry);
          const id = `${entry.actor}|${entry.key}`;
          const task = calls.isTask(entry);
          if (entry.phase === 'started') {
            inFlight.set(id, { entry, since: Date.parse(entry.at) || Date.now(), task });
            break;
          }
          inFlight.delete(id);
          const r = entry.result;
          if (!r) break;
          if (task) {
            if (r.success) totals.tasksDone++;
            else totals.tasksFailed++;
            if (!live) {
              const outcome = r.success ? 'done' : `failed (${r.error?.kind ?? 'error'}: ${visibleControls(r.error?.message ?? '')})`;
              write(`    task ${visibleControls(entry.taskType)} ${visibleControls(entry.key)}: ${r.cached ? 'stored result, not run again' : `${outcome}, ${Math.round(r.durationMs)} ms`}`);
            }
            break;
          }
          if (r.success) totals.done++;
          else totals.failed++;
          if (r.cached) totals.cached++;
          totals.inputTokens += r.usage.inputTokens;
          totals.outputTokens += r.usage.outputTokens;
          if (!live) {
            const outcome = r.success ? 'done' : `failed (${r.error?.kind ?? 'error'}: ${visibleControls(r.error?.message ?? '')})${r.fallback !== undefined ? ', fallback used' : ''}`;
            write(`    microtask ${visibleControls(entry.taskType)} ${visibleControls(entry.key)}: ${outcome}, ${Math.round(r.durationMs)} ms, ${r.cached ? 'stored result, no call' : !r.success && r.usage.calls === 0 ? 'no call made' : formatTokens(r.usage.inputTokens, r.usage.outputTokens)}`);
          }
          break;
        }
      }
    },
    done() {
      if (timer) clearInterval(timer);
      if (logUpdate) {
        logUpdate(render());
        logUpdate.done();
      }
    },
  };
}
