import type { Command } from 'commander';
import pc from 'picocolors';
import { loadConfig } from '../../config.js';
import type { Journal, JournalEntry } from '../../journal/Journal.js';
import { createLogger } from '../../log.js';
import type { FlowSnapshotRecord, SnapshotStore } from '../../persistence/SnapshotStore.js';
import { openFlowState } from '../../composition.js';
import { ExitCode, UsageError } from '../exitCodes.js';
import { hintAnswer } from '../flowHints.js';
import { printData } from '../flowOutput.js';
import { colorWanted, progressDisplay } from '../liveProgress.js';
import { loadForUser } from '../loadForUser.js';
import { renderHistory } from '../show.js';

interface ShowOptions {
  json?: boolean;
  verbose?: boolean;
  snapshots?: boolean;
  follow?: boolean;
}

/** `microtask show <flowId>`: a flow's history, or (--follow) its live progress. */
export function addShowCommand(program: Command, setExit: (code: number) => void) {
  program
    .command('show')
    .description("a flow's history: each transition and microtask, with tokens and durations")
    .argument('<flowId>', 'the flow, as `microtask flows` lists it')
    .option('--json', 'print the record and the journal entries as JSON')
    .option('-v, --verbose', "also print each microtask's prompt and answer")
    .option('--snapshots', 'with --json: include the snapshot saved at each step')
    .option('-f, --follow', 'follow the flow live until it ends (Ctrl-C stops following, not the flow)')
    .action(async (flowId: string, options: ShowOptions) => {
      setExit(await showCommand(flowId, options));
    });
}

async function showCommand(flowId: string, options: ShowOptions) {
  if (options.snapshots && !options.json) throw new UsageError('--snapshots goes with --json (the text history has no room for whole snapshots)');
  const config = loadConfig();
  const logger = createLogger(config.MICROTASK_LOG_LEVEL ?? 'error');
  await using state = await openFlowState(config, logger, 'cli');
  {
    const store = state.store;
    const journal = await state.journal();
    const record = (await loadForUser(store, flowId))?.record;
    if (options.follow) return await followFlow(flowId, record, journal, store);
    const entries = await journal.read(flowId);
    if (!record && entries.length === 0) throw new UsageError(`no flow ${flowId}: \`microtask flows\` lists them`, 'FLOW_NOT_FOUND');
    if (options.json) {
      // Snapshots are the bulk of a journal: only with --snapshots.
      const strip = (e: JournalEntry) => (e.kind === 'step' && !options.snapshots ? { ...e, snapshot: undefined } : e);
      printData({ record: record && !options.snapshots ? { ...record, snapshot: undefined } : (record ?? null), entries: entries.map(strip) });
    } else {
      process.stdout.write(`${renderHistory(record, entries, pc.createColors(colorWanted(process.stdout)), options.verbose ?? false)}\n`);
      // What it waits for now, and how to answer: the history ends where the wait began.
      if (record?.status === 'running' && record.waiting?.length) hintAnswer(flowId, record.waiting, process.stdout);
    }
    return ExitCode.ok;
  }
}

/** How long `show --follow` waits for a flow's end in the journal once its record says it ended. */
const JOURNAL_CATCH_UP_MS = 3_000;

/** `show --follow`: the live progress of a flow until it ends (or Ctrl-C), from any process. */
async function followFlow(flowId: string, record: FlowSnapshotRecord | undefined, journal: Journal, store: SnapshotStore) {
  if (!record) throw new UsageError(`no flow ${flowId}: \`microtask flows\` lists them`, 'FLOW_NOT_FOUND');
  const progress = progressDisplay();
  let ended: (status: string) => void;
  const end = new Promise<string>((resolve) => (ended = resolve));
  const follow = await journal.follow(flowId, (e) => {
    progress.onEntry(e);
    if (e.kind === 'flow' && e.phase === 'ended') ended(e.status);
  });
  // A flow that ended before the journal saw it (or whose end was not journaled) ends the follow too.
  // The record is saved before the end is journaled, and the journal is read by polling
  // from another process: give it time to deliver the end (and what came before it).
  let grace: NodeJS.Timeout | undefined;
  const poll = setInterval(() => {
    void store.load(flowId).then(
      (s) => {
        if (s && s.record.status !== 'running' && !grace) grace = setTimeout(() => ended(s.record.status), JOURNAL_CATCH_UP_MS);
      },
      () => undefined,
    );
  }, 1_000);
  process.once('SIGINT', () => ended('interrupted'));
  const status = await end;
  clearInterval(poll);
  clearTimeout(grace);
  await follow.stop();
  progress.done();
  return status === 'done' ? ExitCode.ok : status === 'interrupted' ? ExitCode.ok : ExitCode.flowFailed;
}
