import type { Journal } from '../journal/Journal.js';
import { teeJournal } from '../journal/tee.js';
import { progressDisplay, type Progress } from './liveProgress.js';

/**
 * Progress of a one-shot flow on stderr, unless --no-progress: live on a terminal, lines
 * otherwise. The command says how the flow ended (its cause once), so the progress does not.
 */
export const progressFor = (options: { progress?: boolean }): Progress | undefined =>
  options.progress === false ? undefined : progressDisplay({ endSaidByCaller: true });

/** The runtime's journal, also feeding the live progress. */
export const journalWith = (journal: Journal, progress: Progress | undefined) => (progress ? teeJournal(journal, (e) => progress.onEntry(e)) : journal);
