import type { ToolEntry } from './answers.js';
import type { TaskSpec } from './microtask.js';
import type { ToolSpec } from './toolSpec.js';

/**
 * The inputs and outputs of the deterministic actors the machines invoke by name (`check`,
 * `codeOnly`, `writeTool`): the machines declare them, src/actors implements them, and
 * neither imports the other.
 */

/**
 * The deterministic check a flow may run on an output before any model reviews it
 * (for the tool builder: it parses, type-checks, runs `--help`). Registered as `check`
 * and provided like the microtask actor; its diagnostics go into the reviewer's prompt
 * and into the revision.
 */
export interface CheckInput {
  key: string;
  output: unknown;
  /** What the output is for, passed through from the flow's input (`checkSubject`): the check's own context. */
  subject?: unknown;
}
export interface CheckResult {
  ok: boolean;
  diagnostics: string[];
}

/** The code-only solver of level 0: deterministic and instant, no model. */
export interface CodeOnlyInput {
  key: string;
  task: TaskSpec;
}
export interface CodeOnlyOutput {
  /** Unset when code alone cannot do this task. */
  output?: unknown;
  /** Why there is no output. */
  reason?: string;
}

/** What the check actor is told about the output it checks. */
export type ToolCheckSubject =
  | { kind: 'module'; spec: ToolSpec; module: string }
  | { kind: 'tool'; spec: ToolSpec; modules: Record<string, string> };

export interface WriteToolInput {
  outRoot: string;
  spec: ToolSpec;
  modules: Record<string, string>;
  entry: ToolEntry;
}
export interface WriteToolOutput {
  dir: string;
  files: string[];
  /** Checks that could not run where the tool was built, and why (no sandbox for `--help`). */
  notRun?: string[];
}
