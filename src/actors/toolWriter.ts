import { randomBytes } from 'node:crypto';
import { lstat, open, realpath, rename, rm } from 'node:fs/promises';
import { dirname, isAbsolute, join, relative, resolve, sep } from 'node:path';
import { ENTRY_PATH, type ToolFiles } from '../toolFiles.js';
import { mkdirs } from '../mkdirs.js';

export type ToolWriteErrorCode = 'PATH_ESCAPE' | 'SYMLINK_REFUSED' | 'NOT_A_DIRECTORY';

export class ToolWriteError extends Error {
  override readonly name = 'ToolWriteError';
  constructor(
    readonly code: ToolWriteErrorCode,
    message: string,
  ) {
    super(message);
  }
}

/** One path segment that stays where it is put: no separators, no `.`/`..`, no NUL. */
function assertSegment(name: string, what: string): void {
  if (!name || name === '.' || name === '..' || /[/\\\0]/.test(name) || isAbsolute(name)) {
    throw new ToolWriteError('PATH_ESCAPE', `${what} "${name}" is not a plain name: it could write outside the output root`);
  }
}

/** Refuses when any existing part of `path` below `base` is a symbolic link. */
async function assertNoSymlinks(base: string, path: string): Promise<void> {
  let current = base;
  for (const part of relative(base, path).split(sep)) {
    current = join(current, part);
    const stat = await lstat(current).catch((e: NodeJS.ErrnoException) => {
      if (e.code === 'ENOENT') return undefined;
      throw e;
    });
    if (!stat) return;
    if (stat.isSymbolicLink()) {
      throw new ToolWriteError('SYMLINK_REFUSED', `${current} is a symbolic link: refusing to write through it`);
    }
  }
}

/**
 * Writes a tool's files into `<outRoot>/<toolName>/`, and nowhere else: a name or path
 * that would leave it (`../../x`, an absolute path) or a symbolic link on the way is
 * refused with a {@link ToolWriteError}. Each file is written to a new temp file (O_EXCL,
 * so never through a link planted there) and renamed into place: a reader sees the old
 * file or the new one. Returns the tool's directory and the absolute paths written.
 */
export async function writeToolFiles(
  outRoot: string,
  toolName: string,
  files: ToolFiles,
): Promise<{ dir: string; written: string[] }> {
  assertSegment(toolName, 'tool name');
  await mkdirs(outRoot);
  const root = await realpath(resolve(outRoot));
  const dir = join(root, toolName);
  await assertNoSymlinks(root, dir);
  await mkdirs(dir);

  const targets = Object.keys(files).map((path) => {
    if (isAbsolute(path) || path.split(/[/\\]/).some((part) => part === '..' || part === '')) {
      throw new ToolWriteError('PATH_ESCAPE', `file path "${path}" leaves the tool's directory`);
    }
    const target = resolve(dir, path);
    if (!target.startsWith(dir + sep)) {
      throw new ToolWriteError('PATH_ESCAPE', `file path "${path}" leaves the tool's directory`);
    }
    return { path, target };
  });

  const written: string[] = [];
  for (const { path, target } of targets) {
    await assertNoSymlinks(dir, dirname(target));
    await mkdirs(dirname(target));
    await assertNoSymlinks(dir, dirname(target));
    const temp = `${target}.${randomBytes(6).toString('hex')}.tmp`;
    const handle = await open(temp, 'wx', path === ENTRY_PATH ? 0o755 : 0o644);
    try {
      await handle.writeFile(files[path]!);
      await handle.sync();
    } catch (e) {
      await handle.close();
      await rm(temp, { force: true });
      throw e;
    }
    await handle.close();
    await rename(temp, target);
    written.push(target);
  }
  return { dir, written };
}
