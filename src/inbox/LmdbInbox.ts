import { randomBytes } from 'node:crypto';
import { EventEmitter } from 'node:events';
import type { KeptEvent } from '../contracts/waits.js';
import { committed, durable, type LmdbStore } from '../persistence/LmdbStore.js';
import { parseKeptEvent, type Inbox } from './Inbox.js';

/**
 * The inbox in the state directory's database (embedded mode): each event under
 * [flowId, time µs, writer], and under [time µs, flowId, writer] for followers. Another
 * process's appends are found by one range read of the time index every `pollMs` (one
 * read per process, not per flow: idle it finds nothing); this process's at once.
 */
export class LmdbInbox implements Inbox {
  private readonly writer = randomBytes(4).toString('hex');
  private readonly appended = new EventEmitter();

  constructor(
    private readonly db: LmdbStore,
    private readonly options: { pollMs?: number; onError?: (message: string) => void } = {},
  ) {}

  private get dbs() {
    return this.db.dbs;
  }

  async append(flowId: string, event: KeptEvent): Promise<void> {
    const at = nextTime();
    const text = JSON.stringify({ ...event, sentAt: event.sentAt ?? Date.now() });
    const { inbox, inboxTimes } = this.dbs;
    // Both puts of one turn go in lmdb-js's one batched commit.
    await Promise.all([durable(inbox.put([flowId, at, this.writer], text)), durable(inboxTimes.put([at, flowId, this.writer], true))]);
    this.appended.emit('appended');
  }

  async read(flowId: string): Promise<KeptEvent[]> {
    const out: KeptEvent[] = [];
    for (const { value } of this.dbs.inbox.getRange({ start: [flowId], end: [flowId, Number.MAX_SAFE_INTEGER] })) {
      const event = parseKeptEvent(flowId, value, this.report);
      if (event) out.push(event);
    }
    return out;
  }

  async readAll(): Promise<Map<string, KeptEvent[]>> {
    const out = new Map<string, KeptEvent[]>();
    for (const { key, value } of this.dbs.inbox.getRange({})) {
      const flowId = (key as unknown[])[0] as string;
      const event = parseKeptEvent(flowId, value, this.report);
      if (!event) continue;
      const events = out.get(flowId) ?? [];
      events.push(event);
      out.set(flowId, events);
    }
    return out;
  }

  async follow(handler: (flowId: string, event: KeptEvent) => void): Promise<{ stop(): Promise<void> }> {
    let stopped = false;
    // From now: what is stored was read by whoever resumed the flows.
    let after: [number, string, string] = [nextTime(), '', ''];
    const seen = new Set<string>();
    const catchUp = () => {
      if (stopped) return;
      try {
        // Another process's commit may land a little after its time: look back a second.
        const from = Math.max(0, after[0] - LOOK_BACK_US);
        let newest = after[0];
        for (const { key } of this.dbs.inboxTimes.getRange({ start: [from] })) {
          const [at, flowId, writer] = key;
          const id = `${at}/${flowId}/${writer}`;
          if (seen.has(id) || at < after[0] - LOOK_BACK_US) continue;
          seen.add(id);
          newest = Math.max(newest, at);
          const text = this.dbs.inbox.get([flowId, at, writer]);
          if (text === undefined) continue;
          const event = parseKeptEvent(flowId, text, this.report);
          if (event && at >= after[0] - LOOK_BACK_US) handler(flowId, event);
        }
        after = [newest, '', ''];
        for (const id of seen) if (Number(id.split('/')[0]) < newest - LOOK_BACK_US) seen.delete(id);
      } catch (e) {
        this.report(`cannot read the inbox: ${(e as Error).message}`);
      }
    };
    // Events already kept before `follow` are not delivered: mark them seen.
    for (const { key } of this.dbs.inboxTimes.getRange({ start: [after[0] - LOOK_BACK_US] })) seen.add(`${key[0]}/${key[1]}/${key[2]}`);
    this.appended.on('appended', catchUp);
    const timer = setInterval(catchUp, this.options.pollMs ?? 500);
    timer.unref();
    return {
      stop: async () => {
        stopped = true;
        clearInterval(timer);
        this.appended.off('appended', catchUp);
      },
    };
  }

  async remove(flowIds: readonly string[]): Promise<void> {
    const { inbox, inboxTimes } = this.dbs;
    const removals: Promise<unknown>[] = [];
    for (const flowId of flowIds) {
      for (const key of inbox.getKeys({ start: [flowId], end: [flowId, Number.MAX_SAFE_INTEGER] })) {
        const [, at, writer] = key as [string, number, string];
        removals.push(committed(inbox.remove(key)), committed(inboxTimes.remove([at, flowId, writer])));
      }
    }
    await Promise.all(removals);
  }

  async prune(before: Date): Promise<number> {
    const { inbox, inboxTimes } = this.dbs;
    const removals: Promise<unknown>[] = [];
    for (const { key } of inboxTimes.getRange({ end: [before.getTime() * 1000] })) {
      const [at, flowId, writer] = key;
      removals.push(committed(inbox.remove([flowId, at, writer])), committed(inboxTimes.remove(key)));
    }
    await Promise.all(removals);
    return removals.length / 2;
  }

  private readonly report = (message: string) => {
    try {
      this.options.onError?.(message);
    } catch {
      // the callback's own failure
    }
  };
}

/** How far back a follower looks again for events another process committed late (µs). */
const LOOK_BACK_US = 1_000_000;

let lastTime = 0;
/** Microseconds since the epoch, strictly increasing in this process. */
function nextTime(): number {
  lastTime = Math.max(Date.now() * 1000, lastTime + 1);
  return lastTime;
}
