import { Option, type Command } from 'commander';
import { fromPromise } from 'xstate';
import { loadConfig, type Config } from '../../config.js';
import type { MicrotaskInput, MicrotaskResult } from '../../contracts/microtask.js';
import { provideFlows } from '../../flows.js';
import { InspectorServerError } from '../../inspector/server.js';
import { createLogger } from '../../log.js';
import { openFlowState } from '../../composition.js';
import { UsageError } from '../exitCodes.js';
import { printData } from '../flowOutput.js';
import { flowsOption } from '../flowsOption.js';
import { port } from '../optionParsers.js';
import { serveInspector } from '../serveInspector.js';
import { serveUntilSignal } from '../serveUntilSignal.js';

/** `microtask inspect [flowId]`: the inspector page served from this process. */
export function addInspectCommand(program: Command, setExit: (code: number) => void) {
  program
    .command('inspect')
    .description('serve the inspector page on localhost over the flows of this mode, and print its URL')
    .argument('[flowId]', 'print the URL of this flow')
    .addOption(new Option('--port <n>', 'listen on this port (default MICROTASK_INSPECTOR_PORT, 7420; 0 = any free)').argParser(port))
    .addOption(flowsOption())
    .addHelpText(
      'after',
      '\nThe daemon serves the same page (on MICROTASK_INSPECTOR_PORT); this is for flows run with `microtask run`\nor `build`, or to look at NATS flows from another machine. It needs no internet.',
    )
    .action(async (flowId: string | undefined, options: { port?: number }) => {
      setExit(await inspectCommand(flowId, options));
    });
}

/** The inspector is a long-running reader: it waits for NATS like a service. */
const inspectorRole = (config: Config) => (config.NATS_URL ? 'inspector' : 'cli');

/** `microtask inspect`: the inspector page over the flows of this mode, without running a daemon. */
async function inspectCommand(flowId: string | undefined, options: { port?: number }) {
  const config = loadConfig();
  const logger = createLogger(config.MICROTASK_LOG_LEVEL ?? 'warn');
  const state = await openFlowState(config, logger, inspectorRole(config));
  const { store } = state;
  const journal = await state.journal();
  // The machines' definitions only: nothing here runs a microtask.
  const flows = provideFlows({ microtask: fromPromise<MicrotaskResult, MicrotaskInput>(() => Promise.reject(new Error('the inspector runs no microtask'))) });
  // Answers from the page go where `microtask send` puts them: the daemon or `run` applies them.
  const inbox = await state.inbox();
  const server = await serveInspector({ journal, store, flows, inbox }, config, logger, options.port ?? config.MICROTASK_INSPECTOR_PORT).catch(async (e: unknown) => {
    if (e instanceof InspectorServerError && e.code === 'INSPECTOR_PORT_IN_USE') {
      throw new UsageError(`port ${options.port ?? config.MICROTASK_INSPECTOR_PORT} is taken (a daemon serves its inspector there already?): choose another with --port`, 'PORT_IN_USE');
    }
    if (e instanceof InspectorServerError && e.code === 'INSPECTOR_TOKEN_REQUIRED') {
      await state.close();
      throw new UsageError(e.message, e.code);
    }
    throw e;
  });
  // The token (if any) rides in the fragment: printed here, kept out of the logs.
  printData(server.pageUrl(flowId));
  process.stderr.write(`inspector serving ${state.mode === 'nats' ? 'the flows on NATS' : `the flows under ${config.MICROTASK_STATE_DIR}`}; Ctrl-C to stop\n`);
  return serveUntilSignal(async () => {
    await server.close();
    await state.close();
  }, logger, { stopping: 'closing the inspector', abandon: 'it only reads' });
}
