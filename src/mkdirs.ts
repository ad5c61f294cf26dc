import { mkdir } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';

/**
 * `mkdir -p`, one level at a time. Node's `mkdir(path, {recursive: true})` never returns
 * on some pseudo-filesystems (`/proc/x` spins at full CPU on Node 20): creating each
 * missing ancestor in turn fails at once with the real error (ENOENT, EACCES, ENOTDIR).
 */
export async function mkdirs(path: string): Promise<void> {
  const target = resolve(path);
  const missing: string[] = [];
  for (let dir = target; ; dir = dirname(dir)) {
    try {
      await mkdir(dir);
      break;
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'EEXIST') break;
      if (code !== 'ENOENT' || dirname(dir) === dir) throw e;
      missing.push(dir);
    }
  }
  for (const dir of missing.reverse()) {
    try {
      await mkdir(dir);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
  }
}
