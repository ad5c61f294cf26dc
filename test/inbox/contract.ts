import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { KeptEvent } from '../../src/contracts/waits.js';
import type { Inbox } from '../../src/inbox/Inbox.js';

export interface InboxUnderTest {
  inbox: Inbox;
  /** Another handle on the same inbox (another process, another connection). */
  second(): Promise<Inbox>;
  /** Puts raw text where the inbox keeps a flow's events (a hostile or broken client). */
  raw(flowId: string, text: string): Promise<void>;
  errors: string[];
  close(): Promise<void>;
}

let flows = 0;
const flowId = () => `reentrant-inbox${Date.now().toString(36)}-${(++flows).toString(16).padStart(8, '0')}`;
const review = (eventId: string, approved = true): KeptEvent => ({ eventId, type: 'review', data: { approved, feedback: eventId } });

const until = async (check: () => void, ms = 10_000) => {
  const end = Date.now() + ms;
  for (;;) {
    try {
      return check();
    } catch (e) {
      if (Date.now() > end) throw e;
      await new Promise((r) => setTimeout(r, 20));
    }
  }
};

/** The inbox contract: every implementation runs these. */
export function runInboxContract(name: string, make: () => Promise<InboxUnderTest>) {
  describe(`Inbox contract: ${name}`, () => {
    let t: InboxUnderTest;
    beforeEach(async () => {
      t = await make();
    });
    afterEach(async () => {
      await t.close();
    });

    it('keeps a flow\'s events in the order sent, each with when it was sent, apart from other flows\'', async () => {
      const a = flowId();
      const b = flowId();
      const before = Date.now();
      await t.inbox.append(a, review('a1'));
      await t.inbox.append(b, review('b1'));
      await t.inbox.append(a, review('a2', false));
      const kept = await (await t.second()).read(a);
      expect(kept.map((e) => e.eventId)).toEqual(['a1', 'a2']);
      expect(kept[1]).toMatchObject({ type: 'review', data: { approved: false, feedback: 'a2' } });
      expect(kept[0]!.sentAt).toBeGreaterThanOrEqual(before);
      expect((await t.inbox.read(b)).map((e) => e.eventId)).toEqual(['b1']);
      expect(await t.inbox.read(flowId())).toEqual([]);
    });

    it('reads every flow\'s events in one pass, by flow, each as read gives them', async () => {
      const a = flowId();
      const b = flowId();
      await t.inbox.append(a, review('a1'));
      await t.inbox.append(b, review('b1'));
      await t.inbox.append(a, review('a2', false));
      const all = await (await t.second()).readAll();
      expect(all.get(a)).toEqual(await t.inbox.read(a));
      expect(all.get(b)).toEqual(await t.inbox.read(b));
      expect(all.get(a)!.map((e) => e.eventId)).toEqual(['a1', 'a2']);
      expect(all.has(flowId())).toBe(false);
    });

    it('tells a follower of each event appended after it started, from any handle, in order, until stopped', async () => {
      const a = flowId();
      await t.inbox.append(a, review('before'));
      const seen: string[] = [];
      const follower = await t.inbox.follow((id, e) => seen.push(`${id === a ? 'a' : '?'}:${e.eventId}`));
      const other = await t.second();
      await other.append(a, review('x1'));
      await t.inbox.append(a, review('x2'));
      await other.append(a, review('x3'));
      await until(() => expect(seen.filter((s) => s !== 'a:before')).toEqual(['a:x1', 'a:x2', 'a:x3']));
      await follower.stop();
      await t.inbox.append(a, review('after'));
      await new Promise((r) => setTimeout(r, 700));
      expect(seen).not.toContain('a:after');
    });

    it('skips what is not an event, says so, and delivers the rest', async () => {
      const a = flowId();
      await t.raw(a, 'not json');
      await t.raw(a, JSON.stringify({ type: 'review' }));
      await t.inbox.append(a, review('ok'));
      expect((await t.inbox.read(a)).map((e) => e.eventId)).toEqual(['ok']);
      expect(t.errors).toHaveLength(2);
      expect(t.errors[0]).toContain(a);
      expect(t.errors.join('\n')).toContain('eventId');
    });

    it('retention forgets what was sent before the cut, and nothing after (or leaves it to the stream\'s max age)', async () => {
      const a = flowId();
      await t.inbox.append(a, review('old'));
      await new Promise((r) => setTimeout(r, 20));
      const cut = new Date();
      await t.inbox.append(a, review('new'));
      const pruned = await t.inbox.prune(cut);
      const left = (await t.inbox.read(a)).map((e) => e.eventId);
      // An inbox whose store expires old events itself prunes nothing here.
      expect(left).toEqual(pruned === 0 ? ['old', 'new'] : ['new']);
      expect(await t.inbox.prune(new Date(0))).toBe(0);
    });

    it('forgets the flows it is told to, and only those', async () => {
      const gone = flowId();
      const kept = flowId();
      await t.inbox.append(gone, review('g'));
      await t.inbox.append(kept, review('k'));
      await t.inbox.remove([gone]);
      expect(await t.inbox.read(gone)).toEqual([]);
      expect((await t.inbox.read(kept)).map((e) => e.eventId)).toEqual(['k']);
    });
  });
}
