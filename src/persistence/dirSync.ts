import { open } from 'node:fs/promises';

/** Makes the renames and deletions done in `dir` durable (its entries fsynced). */
export async function syncDir(dir: string): Promise<void> {
  if (process.platform === 'win32') return;
  const handle = await open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/**
 * Runs `task` for callers, several callers sharing a run (group commit): a caller joins the
 * next run to start, never one already running (it may have begun before what the caller
 * waits for, a rename or an append).
 */
export class Coalesced {
  private running: Promise<void> | undefined;
  private next: Promise<void> | undefined;

  constructor(private readonly task: () => Promise<void>) {}

  run(): Promise<void> {
    if (!this.running) {
      const running = this.task().finally(() => {
        if (this.running === running) this.running = undefined;
      });
      this.running = running;
      return running;
    }
    this.next ??= this.running
      .catch(() => undefined)
      .then(() => {
        this.next = undefined;
        return this.run();
      });
    return this.next;
  }
}

/** Directory fsyncs shared by many writers: the renames done before a call are durable when it resolves. */
export class GroupDirSync {
  private readonly syncs: Coalesced;

  constructor(dir: string) {
    this.syncs = new Coalesced(() => syncDir(dir));
  }

  sync(): Promise<void> {
    return this.syncs.run();
  }
}
