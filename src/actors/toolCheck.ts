import { rm } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Piscina } from 'piscina';
import type { CheckResult } from '../contracts/deterministicActors.js';
import { ENTRY_PATH, modulePath, type ToolFiles } from '../toolFiles.js';
import type { ToolSpec } from '../contracts/toolSpec.js';
import { noDebuggerFlags, runSandboxed, SANDBOX_TOOL_DIR, sandboxStatus, sandboxTempDir, SandboxUnavailableError } from './sandbox.js';
import type { TypeCheckTask } from './typeCheckWorker.js';
import { writeToolFiles } from './toolWriter.js';

/**
 * Level 0 of the tool builder: deterministic checks of generated code, before any model
 * reviews it. Each returns diagnostics a model can act on ("src/auth.js:3:7 TS2304:
 * Cannot find name 'token'"), which go into the verifier's prompt and the revision.
 *
 * The TypeScript compiler runs in a pool of worker threads (src/actors/typeCheckWorker.ts),
 * never on the caller's event loop; running `--help` runs generated code, and only in
 * the OS sandbox of src/actors/sandbox.ts.
 */

// Running from src (tsx, vitest) the worker is TypeScript: its thread needs tsx's loader.
const fromSource = import.meta.url.endsWith('.ts');
const workerFile = new URL(`./typeCheckWorker.${fromSource ? 'ts' : 'js'}`, import.meta.url);
const workerExecArgv = (): string[] => {
  const inherited = process.execArgv.filter((flag) => !flag.startsWith('--inspect'));
  if (!fromSource || inherited.some((flag) => flag.includes('tsx'))) return inherited;
  return [...inherited, '--import', pathToFileURL(createRequire(import.meta.url).resolve('tsx')).href];
};

/**
 * Threads by cores, leaving one to the event loop, at most 4: each thread holds the
 * compiler and the parsed lib files (about 100 MB). Idle threads end after a minute and
 * never keep the process alive (piscina unrefs them).
 */
export const TYPE_CHECK_THREADS = Math.max(1, Math.min(4, availableParallelism() - 1));
let pool: Piscina<TypeCheckTask, string[]> | undefined;

function typeCheckPool(): Piscina<TypeCheckTask, string[]> {
  pool ??= new Piscina<TypeCheckTask, string[]>({
    filename: workerFile.href,
    minThreads: 0,
    maxThreads: TYPE_CHECK_THREADS,
    idleTimeout: 60_000,
    execArgv: workerExecArgv(),
    name: 'default',
  });
  return pool;
}

/**
 * Ends the type-check threads at once, rejecting the checks they run (at shutdown; a later
 * check starts new ones). Not piscina's `close({ force })`: that drops only the queued
 * checks and waits up to 30 s for the running ones, which kept a stopped daemon compiling.
 */
export async function closeToolChecks(): Promise<void> {
  const closing = pool;
  pool = undefined;
  await closing?.destroy();
}

let holders = 0;
/**
 * Holds the type-check pool for a long-running owner (a daemon); the returned release,
 * called by the last holder, ends its threads and the checks they run (their flows are
 * stopped by then, resumable). Without it, a stopped daemon's process went on compiling
 * the checks in flight and queued, for as long as they took, before it could exit.
 */
export function holdToolChecks(): () => Promise<void> {
  holders++;
  let released = false;
  return async () => {
    if (released) return;
    released = true;
    holders--;
    if (holders === 0) await closeToolChecks();
  };
}

const typeCheck = (task: TypeCheckTask): Promise<string[]> => typeCheckPool().run(task);

/** A tool check's result; `notRun` names checks that were not run, and why (never the generated code's fault). */
export interface ToolCheckResult extends CheckResult {
  notRun?: string[];
}

/** One module on its own: it parses, type-checks, exports something, imports only what it may. */
export async function checkModule(spec: ToolSpec, moduleName: string, code: unknown): Promise<CheckResult> {
  if (typeof code !== 'string' || code.trim() === '') {
    return { ok: false, diagnostics: [`${modulePath(moduleName)}: no source code was produced`] };
  }
  const diagnostics = await typeCheck({ kind: 'module', spec, module: moduleName, code });
  return { ok: diagnostics.length === 0, diagnostics };
}

/**
 * Sandboxed `--help` runs at once, at most: each is a Node process of ~40 MB, and 300
 * concurrent builds must not start 300 of them. A run waits here before its timeout starts.
 */
export const HELP_RUNS = Math.max(2, availableParallelism());
let helpRunning = 0;
const helpWaiting: Array<() => void> = [];
async function helpSlot<T>(run: () => Promise<T>): Promise<T> {
  if (helpRunning >= HELP_RUNS) await new Promise<void>((resolve) => helpWaiting.push(resolve));
  else helpRunning++;
  try {
    return await run();
  } finally {
    // The slot passes to the next waiter as it is; with none, it is freed.
    const next = helpWaiting.shift();
    if (next) next();
    else helpRunning--;
  }
}

/** How a skipped `--help` is recorded, in a check's result and in the built tool's output. */
export const helpNotRun = (reason: string) => `${ENTRY_PATH} --help was not run: ${reason}`;

/** `--help` ran (with what it found), or could not run here, and why. */
export type HelpCheck = { ran: true; diagnostics: string[] } | { ran: false; reason: string };

let warnedNotRun = false;
/** Said once per process: every later build here skips `--help` for the same reason. */
function warnNotRun(reason: string): void {
  if (warnedNotRun) return;
  warnedNotRun = true;
  process.emitWarning(`the tool builder's --help check is not run on this host: ${reason}`, { code: 'MICROTASK_SANDBOX_UNAVAILABLE' });
}

/**
 * Runs `node src/cli.js --help` on a temporary copy of the tool, in the OS sandbox
 * (src/actors/sandbox.ts): its own user, pid and network namespaces, a read-only view of
 * /usr, Node and the tool, no environment, killed after `timeoutMs`. Node's permission
 * model is kept inside as a second layer (no writes, no child processes, no addons).
 * Where no sandbox works, the code is not run and the reason is returned.
 */
export async function checkHelp(spec: ToolSpec, files: ToolFiles, timeoutMs = 5_000): Promise<HelpCheck> {
  const status = await sandboxStatus();
  if (!status.ok) {
    warnNotRun(status.reason);
    return { ran: false, reason: status.reason };
  }
  return helpSlot(() => runHelpSandboxed(spec, files, timeoutMs));
}

async function runHelpSandboxed(spec: ToolSpec, files: ToolFiles, timeoutMs: number): Promise<HelpCheck> {
  const tempRoot = await sandboxTempDir();
  try {
    const { dir } = await writeToolFiles(tempRoot, spec.name, files);
    const result = await runSandboxed({
      dir,
      tempRoot,
      timeoutMs,
      command: [
        process.execPath,
        ...noDebuggerFlags(),
        '--experimental-permission',
        `--allow-fs-read=${SANDBOX_TOOL_DIR}`,
        '--disable-warning=ExperimentalWarning',
        '--max-old-space-size=256',
        join(SANDBOX_TOOL_DIR, ENTRY_PATH),
        '--help',
      ],
    });
    const diagnostics = (() => {
      if (result.timedOut) return [`${ENTRY_PATH} --help did not finish within ${timeoutMs} ms (it must print usage and exit)`];
      if (result.overflowed) return [`${ENTRY_PATH} --help printed more than 256 KB; usage must be short`];
      if (result.code !== 0) {
        const exit = result.signal ? `was killed by ${result.signal}` : `exited with code ${result.code}`;
        return [`${ENTRY_PATH} --help ${exit}: ${result.stderr.trim().split('\n').slice(0, 8).join('\n')}`];
      }
      if (!result.stdout.trim()) return [`${ENTRY_PATH} --help printed nothing on stdout; it must print usage`];
      return [];
    })();
    return { ran: true, diagnostics };
  } catch (error) {
    if (error instanceof SandboxUnavailableError) {
      warnNotRun(error.reason);
      return { ran: false, reason: error.reason };
    }
    throw error;
  } finally {
    await rm(tempRoot, { recursive: true, force: true });
  }
}

/** `--help`'s diagnostics; none when it could not run here ({@link checkHelp} says why). */
export async function runHelp(spec: ToolSpec, files: ToolFiles, timeoutMs = 5_000): Promise<string[]> {
  const help = await checkHelp(spec, files, timeoutMs);
  return help.ran ? help.diagnostics : [];
}

/**
 * The whole tool: every module of the spec present and exporting, the entry importing
 * each of them, everything type-checking together, and `--help` running. When `--help`
 * cannot run on this host (no sandbox), the tool is judged on the rest and `notRun` says
 * so: the refusal is not the generated code's fault, and a model cannot repair it.
 */
export async function checkTool(spec: ToolSpec, files: ToolFiles): Promise<ToolCheckResult> {
  const diagnostics = await typeCheck({ kind: 'tool', spec, files });
  // Only code that type-checks is run.
  if (diagnostics.length > 0) return { ok: false, diagnostics };
  const help = await checkHelp(spec, files);
  if (!help.ran) return { ok: true, diagnostics: [], notRun: [helpNotRun(help.reason)] };
  return { ok: help.diagnostics.length === 0, diagnostics: help.diagnostics };
}
