import type { Journal } from '../journal/Journal.js';
import { teeJournal } from '../journal/tee.js';
import type { FlowCalls } from './flowCalls.js';
import { progressDisplay, type Progress } from './liveProgress.js';

/**
 * Progress of a one-shot flow on stderr, unless --no-progress: live on a terminal, lines
 * otherwise. The command says how the flow ended (its cause once), so the progress does not.
 */
export const progressFor = (options: { progress?: boolean }): Progress | undefined =>
  options.progress === false ? undefined : progressDisplay({ endSaidByCaller: true });

/**
 * The runtime's journal, also feeding the live progress and the tally of the flow's model
 * calls that the command's last lines read (why it ran on fallbacks), progress or not.
 */
export const journalWith = (journal: Journal, progress: Progress | undefined, calls?: FlowCalls) =>
  progress || calls
    ? teeJournal(journal, (e) => {
        calls?.onEntry(e);
        progress?.onEntry(e);
      })
    : journal;
