import type { Journal, JournalEntry } from './Journal.js';

/** The same journal, also telling `listener` of each entry as it is appended (live progress in this process). */
export function teeJournal(journal: Journal, listener: (entry: JournalEntry) => void): Journal {
  return {
    append(entry, snapshotJson, stepStored) {
      const stored = journal.append(entry, snapshotJson, stepStored);
      try {
        listener(entry);
      } catch {
        // A display that breaks must not break the flow.
      }
      return stored;
    },
    flush: () => journal.flush(),
    read: (flowId) => journal.read(flowId),
    follow: (flowId, handler) => journal.follow(flowId, handler),
    remove: (flowIds) => journal.remove(flowIds),
    prune: (olderThan) => journal.prune(olderThan),
    close: () => journal.close(),
  };
}
