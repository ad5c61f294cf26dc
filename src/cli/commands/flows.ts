import type { Command } from 'commander';
import { loadConfig } from '../../config.js';
import { createLogger } from '../../log.js';
import type { FlowSummary } from '../../persistence/SnapshotStore.js';
import { openFlowState } from '../../composition.js';
import { ExitCode, UsageError } from '../exitCodes.js';
import { printData } from '../flowOutput.js';
import { prune } from '../prune.js';

/** `microtask flows`: the flows of this mode, with their status, state and last update. */
export function addFlowsCommand(program: Command, setExit: (code: number) => void) {
  program
    .command('flows')
    .description('list flows with their status, state and last update (embedded: MICROTASK_STATE_DIR; NATS: KV)')
    .option('--status <list>', 'only these statuses, comma-separated: running,done,failed,cancelled')
    .option('--json', 'print the list as JSON')
    .action(async (options: { json?: boolean; status?: string }) => {
      setExit(await flowsCommand(options));
    });
}

const FLOW_STATUSES = ['running', 'done', 'failed', 'cancelled'] as const;

function parseStatuses(list: string): FlowSummary['status'][] {
  const statuses = list.split(',').map((s) => s.trim());
  const unknown = statuses.filter((s) => !(FLOW_STATUSES as readonly string[]).includes(s));
  if (unknown.length > 0) throw new UsageError(`unknown status ${unknown.join(', ')}: --status takes ${FLOW_STATUSES.join(', ')} (comma-separated)`);
  return statuses as FlowSummary['status'][];
}

async function flowsCommand(options: { json?: boolean; status?: string }) {
  const config = loadConfig();
  const logger = createLogger(config.MICROTASK_LOG_LEVEL ?? 'error');
  await using state = await openFlowState(config, logger, 'cli');
  const { store } = state;
    await prune(store, config, logger);
    const statuses = options.status ? parseStatuses(options.status) : undefined;
    const flows = await store.list(statuses ? { status: statuses } : {});
    if (options.json) printData(flows);
    else if (!flows.length) process.stderr.write(`no flows${statuses ? ` with status ${statuses.join(' or ')}` : ''} in ${state.where}\n`);
    else {
      const rows = flows.map((f) => [f.flowId, f.pattern, f.status, typeof f.state === 'string' ? f.state : JSON.stringify(f.state), f.updatedAt]);
      const widths = [0, 1, 2, 3].map((i) => Math.max(...rows.map((r) => r[i]!.length), ['FLOW', 'PATTERN', 'STATUS', 'STATE'][i]!.length));
      const line = (r: string[]) => r.map((c, i) => (i < 4 ? c.padEnd(widths[i]!) : c)).join('  ');
      process.stdout.write(`${line(['FLOW', 'PATTERN', 'STATUS', 'STATE', 'UPDATED'])}\n${rows.map(line).join('\n')}\n`);
    }
  return ExitCode.ok;
}
