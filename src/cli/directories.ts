import { constants } from 'node:fs';
import { access, stat } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { mkdirs } from '../mkdirs.js';
import { UsageError } from './exitCodes.js';

/**
 * What stops this process from using `dir` as a directory it writes in, as a predicate
 * ("is a file, not a directory"), or undefined when nothing does. Creates nothing: a missing
 * directory is fine when its nearest existing ancestor is a directory it may write in.
 */
export async function directoryProblem(dir: string): Promise<string | undefined> {
  const target = resolve(dir);
  for (let path = target; ; path = dirname(path)) {
    let isDirectory: boolean;
    try {
      isDirectory = (await stat(path)).isDirectory();
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'ENOENT' && dirname(path) !== path) continue;
      if (code === 'ENOTDIR') return 'is under a file, not a directory';
      return `cannot be used (${code ?? (e as Error).message})`;
    }
    if (!isDirectory) return path === target ? 'is a file, not a directory' : `is under a file (${path}), not a directory`;
    try {
      await access(path, constants.W_OK);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code ?? (e as Error).message;
      return path === target ? `is not writable (${code})` : `cannot be created: ${path} is not writable (${code})`;
    }
    return undefined;
  }
}

/**
 * MICROTASK_STATE_DIR must be a directory this process can write (or create): found wrong
 * here, it is one line a person can act on, not a crash deep in a store's mkdir.
 */
export async function assertStateDirectory(dir: string): Promise<void> {
  const problem = await directoryProblem(dir);
  if (problem) {
    throw new UsageError(`MICROTASK_STATE_DIR=${dir} ${problem}: set it to a directory this user can write (created if missing)`, 'STATE_DIR_UNUSABLE');
  }
}

/** Creates the directory (and its parents) and proves it writable, before any model call is paid for. */
export async function assertWritableDirectory(dir: string): Promise<void> {
  const unusable = (reason: string) =>
    new UsageError(`cannot write tools to ${dir}: ${reason}; choose another --out or MICROTASK_STATE_DIR`, 'OUT_NOT_WRITABLE');
  const problem = await directoryProblem(dir);
  if (problem) throw unusable(`it ${problem}`);
  try {
    await mkdirs(dir);
  } catch (e) {
    throw unusable(`it cannot be created (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
}
