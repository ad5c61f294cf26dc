/**
 * Another process over the same embedded database, for the cross-process tests
 * (lmdbCrossProcess.test.ts); run with `node --import tsx lmdbChild.ts <command> <stateDir> …`.
 * No vitest here. It prints one JSON line per answer and reads commands from stdin, so the
 * test decides when each write starts (races with its own writes).
 */
import { createInterface } from 'node:readline';
import { pathToFileURL } from 'node:url';
import { LmdbSnapshotStore } from '../../src/persistence/LmdbSnapshotStore.js';
import { LmdbStore } from '../../src/persistence/LmdbStore.js';
import type { FlowSnapshotRecord, FlowStep } from '../../src/persistence/SnapshotStore.js';

export function childRecord(flowId: string, state: string, status: FlowSnapshotRecord['status'] = 'running'): FlowSnapshotRecord {
  return {
    flowId,
    pattern: 'feedbackLoop',
    machineId: 'feedbackLoop',
    machineVersion: 1,
    status,
    state,
    updatedAt: new Date().toISOString(),
    snapshot: { status: 'active', value: state, context: { note: 'x'.repeat(2000) } },
  };
}

export function childStep(flowId: string, step: number): FlowStep {
  return { step, at: new Date().toISOString(), actor: 'root', machine: 'feedbackLoop', state: `s${step}`, event: 'next', rootState: `s${step}`, snapshotJson: JSON.stringify({ flowId, step }) };
}

const say = (answer: unknown) => process.stdout.write(`${JSON.stringify(answer)}\n`);

async function main() {
  const [command, stateDir] = process.argv.slice(2);
  const db = await LmdbStore.open(stateDir!);
  const store = await LmdbSnapshotStore.open(db);
  say({ ready: true });

  if (command === 'save-forever') {
    // Saves flow after flow, each with two steps, saying which once it resolved; until killed.
    for (let i = 0; ; i++) {
      const flowId = `killed-${i}`;
      const revision = await store.save(childRecord(flowId, 'one'), null, { steps: [childStep(flowId, 1)] });
      const next = await store.save(childRecord(flowId, 'two'), revision, { steps: [childStep(flowId, 2)] });
      say({ saved: flowId, revision: next });
    }
  }

  // Line commands: `save <flowId> <expected|null> <state>`, `cancel <flowId>`, `claim <requestId> <flowId>`, `exit`.
  for await (const line of createInterface({ input: process.stdin })) {
    const [verb, ...args] = line.trim().split(' ');
    try {
      if (verb === 'save') {
        const [flowId, expected, state] = args as [string, string, string];
        say({ revision: await store.save(childRecord(flowId, state), expected === 'null' ? null : Number(expected)) });
      } else if (verb === 'cancel') {
        // What `microtask cancel` does from another process: mark the flow cancelled at the revision it read.
        const [flowId] = args as [string];
        const loaded = (await store.load(flowId))!;
        say({ revision: await store.save({ ...loaded.record, status: 'cancelled', updatedAt: new Date().toISOString() }, loaded.revision) });
      } else if (verb === 'claim') {
        const [requestId, flowId] = args as [string, string];
        say({ flowId: await db.claimRequest(requestId, flowId) });
      } else if (verb === 'exit') {
        break;
      }
    } catch (e) {
      say({ error: (e as { code?: string }).code ?? String(e), actualRevision: (e as { actualRevision?: unknown }).actualRevision });
    }
  }
  await db.close();
}

// Run as a script (the tests import its fixtures too).
if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) await main();
