import { execFileSync } from 'node:child_process';
import { mkdtemp, open, rm, rmdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/**
 * A real full file system: a small tmpfs mounted in a temp dir, filled by one file, so
 * writes fail with ENOSPC as on a full disk. Needs root (or CAP_SYS_ADMIN): without it the
 * test fails saying so, it is never skipped.
 */
export async function smallDisk(sizeKb = 1024) {
  const dir = await mkdtemp(join(tmpdir(), 'full-disk-'));
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${sizeKb}k`, 'tmpfs', dir], { stdio: 'pipe' });
  } catch (e) {
    throw new Error(
      `this test mounts a small tmpfs to fill it, which needs root (or CAP_SYS_ADMIN): run it as root (${(e as Error).message.split('\n')[0]})`,
    );
  }
  const filler = join(dir, '.filler');
  return {
    dir,
    /** Writes until the disk is full. */
    async fill() {
      const handle = await open(filler, 'a');
      const chunk = Buffer.alloc(16 * 1024, 1);
      try {
        for (;;) await handle.write(chunk);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ENOSPC') throw e;
      } finally {
        await handle.close().catch(() => undefined);
      }
      // Whatever room a smaller write could still take.
      const small = await open(filler, 'a');
      try {
        for (;;) await small.write(Buffer.alloc(512, 1));
      } catch {
        // full
      } finally {
        await small.close().catch(() => undefined);
      }
    },
    free: () => rm(filler, { force: true }),
    async [Symbol.asyncDispose]() {
      execFileSync('umount', ['-l', dir], { stdio: 'pipe' });
      await rmdir(dir).catch(() => undefined);
    },
  };
}
