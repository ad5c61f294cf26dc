import type { TaskSpec } from './common.js';

/** An output as it is shown to a model: text as is, anything else as JSON. */
export const showOutput = (output: unknown): string =>
  typeof output === 'string' ? output : JSON.stringify(output, null, 2);

const diagnosticsBlock = (diagnostics: readonly string[]): string =>
  diagnostics.length ? `\n\nAutomatic checks found these problems; fix every one:\n${diagnostics.map((d) => `- ${d}`).join('\n')}` : '';

/** The prompt of a revision: the task, the last attempt, and what was wrong with it. */
export function revisionPrompt(
  task: TaskSpec,
  previous: { output: unknown; feedback: string; score?: number | null; diagnostics?: readonly string[] },
): string {
  const scored = previous.score === undefined || previous.score === null ? '' : ` (it scored ${previous.score.toFixed(2)})`;
  return (
    `${task.prompt}\n\nYour previous attempt${scored}:\n<previous_attempt>\n${showOutput(previous.output)}\n</previous_attempt>` +
    (previous.feedback ? `\n\nFeedback on it:\n<feedback>\n${previous.feedback}\n</feedback>` : '') +
    diagnosticsBlock(previous.diagnostics ?? []) +
    '\n\nGive a complete, improved answer (not a list of changes).'
  );
}

/**
 * The data a verifier or reviewer gets: what was asked, what was answered, and what the
 * deterministic checks found. The verifier's own prompt says how to judge.
 */
export function reviewData(task: TaskSpec, output: unknown, diagnostics: readonly string[]): Record<string, unknown> {
  return {
    task: { system: task.system, prompt: task.prompt, ...(task.data !== undefined ? { data: task.data } : {}) },
    output,
    ...(diagnostics.length ? { checkDiagnostics: diagnostics } : {}),
  };
}
