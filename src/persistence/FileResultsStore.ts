import { createHash, randomBytes } from 'node:crypto';
import { mkdir, open, readFile, rename } from 'node:fs/promises';
import { join } from 'node:path';
import { GroupDirSync } from './dirSync.js';
import { MicrotaskResultSchema, type MicrotaskResult } from '../actors/microtaskTypes.js';
import type { ResultsStore } from '../actors/ResultsStore.js';

/**
 * Microtask results on disk, for embedded mode: a flow resumed after a crash finds the
 * results of the calls it had already paid for. One file per key (its hash), written to
 * a temp file, fsynced and renamed (and the directory fsynced, shared between puts), so a
 * crash never leaves half a result and a stored one stays stored.
 */
export class FileResultsStore implements ResultsStore {
  private ready: Promise<unknown> | undefined;
  private readonly dirSyncs: GroupDirSync;

  constructor(private readonly dir: string) {
    this.dirSyncs = new GroupDirSync(dir);
  }

  private path(key: string): string {
    return join(this.dir, `${createHash('sha256').update(key).digest('hex').slice(0, 40)}.json`);
  }

  async get(key: string): Promise<MicrotaskResult | undefined> {
    let raw: string;
    try {
      raw = await readFile(this.path(key), 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw e;
    }
    // A result that does not parse is as good as none: the task runs again.
    try {
      const parsed = MicrotaskResultSchema.safeParse(JSON.parse(raw));
      return parsed.success && parsed.data.key === key ? parsed.data : undefined;
    } catch {
      return undefined;
    }
  }

  async put(key: string, result: MicrotaskResult): Promise<void> {
    this.ready ??= mkdir(this.dir, { recursive: true });
    await this.ready;
    const target = this.path(key);
    const temp = `${target}.${randomBytes(6).toString('hex')}.tmp`;
    const handle = await open(temp, 'wx');
    try {
      await handle.writeFile(JSON.stringify(result));
      await handle.sync();
    } finally {
      await handle.close();
    }
    await rename(temp, target);
    // Until the directory is fsynced the rename may not survive a power cut: the call would be paid for again.
    await this.dirSyncs.sync();
  }
}
