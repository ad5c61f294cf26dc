import { createHash } from 'node:crypto';
import { Command, CommanderError, Option } from 'commander';
import { z } from 'zod';
import { MicrotaskInputSchema, type MicrotaskResult } from '../actors/microtaskTypes.js';
import { ConfigError, loadConfig } from '../config.js';
import { createLogger } from '../log.js';
import { createRuntime } from '../runtime.js';
import { ExitCode, UsageError } from './exitCodes.js';
import { readJsonFile } from './readJson.js';

const EXIT_CODES_HELP = `
Exit codes:
  0  done
  1  the flow finished without success (failed, fell back, or over budget)
  2  wrong usage: unknown command or flag, bad input file, bad environment variable
  3  an unexpected error (see the message and the logs)

Environment: ANTHROPIC_API_KEY (unset: offline cassette), ANTHROPIC_BASE_URL, MICROTASK_MODEL,
MICROTASK_STATE_DIR, MICROTASK_TIMEOUT_MS, MICROTASK_LOG_LEVEL, NATS_URL. See the README.`;

/** A microtask as given on the command line: the key is optional there (derived from the content). */
const CliMicrotaskSchema = MicrotaskInputSchema.extend({ key: z.string().min(1).optional() });

async function runMicrotask(file: string, options: { json?: boolean }): Promise<number> {
  const config = loadConfig();
  const logger = createLogger(config.MICROTASK_LOG_LEVEL ?? 'warn');
  const task = await readJsonFile(file, CliMicrotaskSchema, 'microtask input');
  const key = task.key ?? `cli/${createHash('sha256').update(JSON.stringify(task)).digest('hex').slice(0, 16)}`;
  const runtime = await createRuntime(config, logger);
  process.stderr.write(`model: ${runtime.modelDescription}\n`);
  const result = await runtime.runner.run({ ...task, key, timeoutMs: task.timeoutMs ?? config.MICROTASK_TIMEOUT_MS });
  printResult(result, options.json ?? false);
  return result.success ? ExitCode.ok : ExitCode.flowFailed;
}

function printResult(result: MicrotaskResult, json: boolean): void {
  if (json) {
    process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
    return;
  }
  const answer = result.success ? result.result : result.fallback;
  process.stdout.write(`${typeof answer === 'string' ? answer : JSON.stringify(answer, null, 2)}\n`);
  const tokens = result.usage.inputTokens + result.usage.outputTokens;
  process.stderr.write(
    result.success
      ? `${result.taskType}: done in ${Math.round(result.durationMs)} ms, ${tokens} tokens${result.cached ? ' (stored result, no call)' : ''}\n`
      : `${result.taskType}: ${result.error?.kind}: ${result.error?.message}; the fallback is printed above\n`,
  );
}

export function buildProgram(setExit: (code: number) => void): Command {
  const program = new Command('microtask')
    .description('Run AI microtasks and the flows made of them: timeouts, fallbacks, structured answers, durable state.')
    .version('0.1.0')
    .showHelpAfterError('(run with --help for usage)')
    .addHelpText('after', EXIT_CODES_HELP)
    .exitOverride();

  program
    .command('run')
    .description('run a pattern in embedded mode and print its output')
    .addArgument(program.createArgument('<pattern>', 'the pattern to run').choices(['microtask']))
    .requiredOption('-i, --input <file>', 'JSON file with the pattern\'s input')
    .addOption(new Option('--json', 'print the whole output as JSON'))
    .addHelpText(
      'after',
      `\nExample:\n  microtask run microtask --input examples/microtask.json\n\nA microtask input: {taskType, system, prompt, data?, answer?, timeoutMs?, key?}.`,
    )
    .action(async (pattern: string, options: { input: string; json?: boolean }) => {
      setExit(await runMicrotask(options.input, options));
    });

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
    if (e instanceof ConfigError || e instanceof UsageError) {
      process.stderr.write(`microtask: ${e.message}\n`);
      return ExitCode.usage;
    }
    process.stderr.write(`microtask: unexpected error: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
    return ExitCode.internal;
  }
}
