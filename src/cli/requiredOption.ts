import { Option, type Command } from 'commander';

const required = new WeakSet<Option>();

/**
 * An option a command cannot run without, marked "(required)" in its help. Commander checks
 * its own mandatory options before it looks for unknown ones, so a mistyped `--inptu x` was
 * reported as "required option '--input' not specified", hiding the typo; these are checked
 * by `checkRequiredOptions` in a preAction hook, which runs after unknown options are refused.
 */
export function requiredOption(flags: string, description: string): Option {
  const option = new Option(flags, `${description} (required)`);
  required.add(option);
  return option;
}

/** Refuses, as commander would, a command run without one of its required options. */
export function checkRequiredOptions(command: Command): void {
  for (const option of command.options) {
    if (required.has(option) && command.getOptionValue(option.attributeName()) === undefined) {
      command.error(`error: required option '${option.flags}' not specified`, { code: 'commander.missingMandatoryOptionValue', exitCode: 2 });
    }
  }
}
