import { fromPromise } from 'xstate';
import type {
  CheckInput,
  CheckResult,
  CodeOnlyInput,
  CodeOnlyOutput,
  ToolCheckSubject,
  WriteToolInput,
  WriteToolOutput,
} from '../contracts/deterministicActors.js';
import { renderToolFiles } from '../toolFiles.js';
import { sandboxStatus } from './sandbox.js';
import { checkModule, checkTool, helpNotRun } from './toolCheck.js';
import { writeToolFiles } from './toolWriter.js';
import { relative } from 'node:path';

/** The side effects of the tool builder, as the actor logic its machine names. */

export const toolCheckLogic = fromPromise<CheckResult, CheckInput>(async ({ input }) => {
  const subject = input.subject as ToolCheckSubject | undefined;
  if (subject?.kind === 'module') {
    const code = (input.output as { code?: unknown } | undefined)?.code;
    return checkModule(subject.spec, subject.module, code);
  }
  if (subject?.kind === 'tool') {
    const entry = input.output as { entry?: unknown; readme?: unknown } | undefined;
    if (typeof entry?.entry !== 'string' || typeof entry.readme !== 'string') {
      return { ok: false, diagnostics: ['the answer has no entry point and README (expected {entry, readme})'] };
    }
    return checkTool(subject.spec, renderToolFiles(subject.spec, subject.modules, { entry: entry.entry, readme: entry.readme }));
  }
  throw new Error(`the tool check got no subject it knows (${JSON.stringify(subject)?.slice(0, 80)})`);
});

/** Fences and stray prose models wrap code in, even inside a tool call. */
export function repairCode(code: string): string {
  let repaired = code.replace(/\r\n/g, '\n');
  // The first fence and the first close after it, found by indexOf: the regex that did this
  // in one pattern rescanned to the end from every opening, quadratic in the model's answer
  // (1 MB of openings that never close held the daemon's event loop for a minute).
  const open = /```[a-z]*\n/.exec(repaired);
  if (open) {
    const start = open.index + open[0].length;
    const close = repaired.indexOf('\n```', start);
    if (close >= 0) repaired = repaired.slice(start, close);
  }
  return `${repaired.trim()}\n`;
}

/**
 * Level 0 of a module's progressive improvement: repair the feedback loop's best attempt
 * by code alone (no model): unwrap markdown fences, normalise line endings. When that
 * changes nothing, there is no code-only solution and the next level runs.
 */
export const codeOnlyRepairLogic = fromPromise<CodeOnlyOutput, CodeOnlyInput>(async ({ input }) => {
  const candidate = (input.task.data as { candidate?: { code?: unknown } } | undefined)?.candidate?.code;
  if (typeof candidate !== 'string') return { reason: 'there is no candidate to repair' };
  const repaired = repairCode(candidate);
  if (repaired === candidate || repaired === `${candidate}\n`) {
    return { reason: 'code-only repairs (markdown fences, line endings) change nothing in the candidate' };
  }
  return { output: { code: repaired } };
});

export function createWriteToolLogic() {
  return fromPromise<WriteToolOutput, WriteToolInput>(async ({ input }) => {
    const { dir, written } = await writeToolFiles(input.outRoot, input.spec.name, renderToolFiles(input.spec, input.modules, input.entry));
    // The checks ran in this process: where it has no sandbox, `--help` was judged not run (toolCheck.ts).
    const sandbox = await sandboxStatus();
    return {
      dir,
      files: written.map((path) => relative(dir, path)).sort(),
      ...(sandbox.ok ? {} : { notRun: [helpNotRun(sandbox.reason)] }),
    };
  });
}
