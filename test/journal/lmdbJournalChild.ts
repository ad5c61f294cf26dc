/**
 * Another process writing a flow's journal in the embedded database, for
 * lmdbJournal.test.ts: `node --import tsx lmdbJournalChild.ts <stateDir> <flowId> <steps>`
 * appends `steps` step entries and the flow's end, then exits.
 */
import { LmdbJournal } from '../../src/journal/LmdbJournal.js';
import { LmdbStore } from '../../src/persistence/LmdbStore.js';

const [stateDir, flowId, count] = process.argv.slice(2) as [string, string, string];
const journal = new LmdbJournal(await LmdbStore.open(stateDir), { onError: (e) => process.stderr.write(`${e.message}\n`) });
for (let step = 1; step <= Number(count); step++) {
  const at = new Date().toISOString();
  journal.append({ kind: 'step', flowId, at, step, actor: 'root', machine: 'm', state: `s${step}`, event: 'next', rootState: `s${step}`, snapshot: { step } });
  // Some in the same commit, some apart.
  if (step % 7 === 0) await new Promise((resolve) => setTimeout(resolve, 15));
}
journal.append({ kind: 'flow', flowId, at: new Date().toISOString(), phase: 'ended', pattern: 'p', status: 'done' });
await journal.close();
