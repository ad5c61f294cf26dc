import { Command, CommanderError } from 'commander';
import { z } from 'zod';
import { CassetteError } from '../actors/model/CassetteModel.js';
import { describeIssues } from '../actors/model/prompt.js';
import { ConfigError, loadConfig, type Config } from '../config.js';
import { useFlowsModule } from '../flows.js';
import { loadFlowsModule } from '../flowsModule.js';
import { isStoreUnavailable } from '../persistence/StoreUnavailableError.js';
import { addBuildCommand } from './commands/build.js';
import { addCancelCommand } from './commands/cancel.js';
import { addDaemonCommand } from './commands/daemon.js';
import { addDevCommand } from './commands/dev.js';
import { addFlowsCommand } from './commands/flows.js';
import { addInspectCommand } from './commands/inspect.js';
import { addResumeCommand } from './commands/resume.js';
import { addRunCommand } from './commands/run.js';
import { addSendCommands } from './commands/send.js';
import { addShowCommand } from './commands/show.js';
import { addWorkerCommand } from './commands/worker.js';
import { assertStateDirectory } from './directories.js';
import { ExitCode, UsageError } from './exitCodes.js';
import { describeStoreStop } from './format.js';
import { checkRequiredOptions } from './requiredOption.js';

const EXIT_CODES_HELP = `
Exit codes:
  0  done
  1  the flow finished without success (failed, fell back, exhausted, over budget, or cancelled)
  2  wrong usage: unknown command or flag, bad input file, bad environment variable, an --out
     or MICROTASK_STATE_DIR that cannot be written, unknown flow, NATS unreachable or refusing
     the credentials, no daemon answering on NATS; the model refused the API key, the
     account has no credit, or the model does not exist (the flow stops at once:
     MODEL_AUTH, MODEL_BILLING, MODEL_NOT_FOUND); or the state directory full or unwritable
     (a flow stops where it stands: \`microtask resume\` it once there is space)
  3  an unexpected error (see the message and the logs)
  130  a second SIGINT/SIGTERM while a daemon or worker was stopping gracefully

Without NATS_URL everything runs in this process (embedded) with state under MICROTASK_STATE_DIR;
with NATS_URL, \`build\`, \`cancel\`, \`send\`, \`approve\`, \`reject\`, \`show\`, \`flows\` and \`inspect\` talk to the daemons on NATS.

Environment: ANTHROPIC_API_KEY (unset: offline cassette), ANTHROPIC_BASE_URL, MICROTASK_MODEL,
MICROTASK_STATE_DIR, MICROTASK_TIMEOUT_MS, MICROTASK_LOG_LEVEL, NATS_URL, NO_COLOR. See the README.`;

/** Whether the command keeps (or reads) anything under MICROTASK_STATE_DIR. */
function usesStateDirectory(command: string, options: { out?: string; detach?: boolean }, config: Config): boolean {
  switch (command) {
    case 'run':
      return true;
    case 'daemon':
      // Embedded: every store. With NATS: the tools its builds write.
      return true;
    case 'build':
      // With NATS the tool is written here: under the state directory unless --out says elsewhere.
      return !config.NATS_URL || (options.out === undefined && !options.detach);
    case 'resume':
    case 'flows':
    case 'show':
    case 'cancel':
    case 'inspect':
      return !config.NATS_URL;
    default:
      return false;
  }
}

export function buildProgram(setExit: (code: number) => void): Command {
  const program = new Command('microtask')
    .description('Run AI microtasks and the flows made of them: timeouts, fallbacks, structured answers, durable state.')
    .version('0.1.0')
    .showHelpAfterError('(run with --help for usage)')
    .addHelpText('after', EXIT_CODES_HELP)
    .exitOverride();

  // A MICROTASK_STATE_DIR that cannot be used would fail deep in a store's mkdir (a stack
  // trace), or only when a paid build writes its tool: every command that keeps something
  // there checks it first.
  program.hook('preAction', async (_program, command) => {
    checkRequiredOptions(command);
    const config = loadConfig();
    if (usesStateDirectory(command.name(), command.opts(), config)) await assertStateDirectory(config.MICROTASK_STATE_DIR);
    // A user's flows (--flows or MICROTASK_FLOWS), for every command that runs, resumes, shows or answers flows.
    const flowsModule = (command.opts() as { flows?: string }).flows ?? (process.env.MICROTASK_FLOWS?.trim() || undefined);
    if (flowsModule !== undefined && command.options.some((o) => o.long === '--flows')) useFlowsModule(await loadFlowsModule(flowsModule));
  });

  // In the order `microtask --help` lists them.
  addRunCommand(program, setExit);
  addBuildCommand(program, setExit);
  addFlowsCommand(program, setExit);
  addShowCommand(program, setExit);
  addCancelCommand(program, setExit);
  addSendCommands(program, setExit);
  addInspectCommand(program, setExit);
  addResumeCommand(program, setExit);
  addDaemonCommand(program, setExit);
  addWorkerCommand(program, setExit);
  addDevCommand(program, setExit);

  return program;
}

/** Runs the CLI; resolves to the exit code instead of exiting, so it can be tested in-process. */
export async function main(argv: string[]): Promise<number> {
  let code: number = ExitCode.ok;
  const program = buildProgram((c) => {
    code = c;
  });
  try {
    await program.parseAsync(argv, { from: 'user' });
    return code;
  } catch (e) {
    if (e instanceof CommanderError) {
      // --help and --version end here with exit code 0; commander has printed what is needed.
      return e.exitCode === 0 ? ExitCode.ok : ExitCode.usage;
    }
    if (e instanceof ConfigError || e instanceof UsageError || e instanceof CassetteError) {
      process.stderr.write(`microtask: ${e.message}\n`);
      return ExitCode.usage;
    }
    // A store that refused before any flow started (opening the state directory's database on a full disk).
    if (isStoreUnavailable(e)) {
      process.stderr.write(`microtask: ${describeStoreStop({ cause: e.message })}\n`);
      return ExitCode.storeUnavailable;
    }
    if (e instanceof z.ZodError) {
      process.stderr.write(`microtask: invalid input:\n${describeIssues(e)}\n`);
      return ExitCode.usage;
    }
    process.stderr.write(`microtask: unexpected error: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
    return ExitCode.internal;
  }
}
