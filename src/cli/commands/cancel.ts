import { randomUUID } from 'node:crypto';
import type { Command } from 'commander';
import { loadConfig } from '../../config.js';
import { createLogger } from '../../log.js';
import { SnapshotConflictError } from '../../persistence/SnapshotStore.js';
import { openFlowState } from '../../composition.js';
import { CANCEL_NOTICE } from '../../contracts/waits.js';
import { DaemonClient } from '../busClient.js';
import { ExitCode, UsageError } from '../exitCodes.js';
import { loadForUser } from '../loadForUser.js';

/** `microtask cancel <flowId>`: a running flow ends as cancelled (with NATS, by the daemon running it). */
export function addCancelCommand(program: Command, setExit: (code: number) => void) {
  program
    .command('cancel')
    .description('cancel a running flow (with NATS_URL: the daemon running it stops it)')
    .argument('<flowId>', 'the flow, as `microtask flows` lists it')
    .addHelpText('after', '\nA cancelled flow ends with status `cancelled` and cannot be resumed. Exit 2 when it is unknown or has ended.')
    .action(async (flowId: string) => {
      setExit(await cancelCommand(flowId));
    });
}

async function cancelCommand(flowId: string) {
  const config = loadConfig();
  const logger = createLogger(config.MICROTASK_LOG_LEVEL ?? 'error');
  await using state = await openFlowState(config, logger, 'cli');
  {
    if (state.bus) {
      await new DaemonClient(state.bus, config.MICROTASK_SUBJECT_PREFIX).cancel(flowId);
      process.stderr.write(`cancelled ${flowId}\n`);
      return ExitCode.ok;
    }
    // Embedded: the record says cancelled (compare-and-set). A process running the flow
    // finds its next save refused and stops it there; a resume finds it ended.
    const store = state.store;
    for (;;) {
      const stored = await loadForUser(store, flowId);
      if (!stored) throw new UsageError(`no flow ${flowId}: \`microtask flows\` lists them`, 'FLOW_NOT_FOUND');
      if (stored.record.status !== 'running') throw new UsageError(`flow ${flowId} already ended: ${stored.record.status}`, 'FLOW_FINISHED');
      const error = { code: 'CANCELLED', message: 'cancelled by `microtask cancel`' };
      try {
        await store.save({ ...stored.record, status: 'cancelled', error, updatedAt: new Date().toISOString() }, stored.revision);
      } catch (e) {
        if (e instanceof SnapshotConflictError) continue;
        throw e;
      }
      const journal = await state.journal();
      journal.append({ kind: 'flow', flowId, at: new Date().toISOString(), phase: 'ended', pattern: stored.record.pattern, status: 'cancelled', error });
      await journal.flush();
      // The process running it, if any, follows the inbox: told so, it stops the flow now
      // (one that only waits, or sleeps, would not find out by a refused save).
      await (await state.inbox()).append(flowId, { eventId: randomUUID(), type: CANCEL_NOTICE, sentAt: Date.now() });
      process.stderr.write(`cancelled ${flowId}\n`);
      return ExitCode.ok;
    }
  }
}
