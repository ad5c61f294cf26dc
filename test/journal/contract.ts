import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { Journal, JournalEntry, JournalError } from '../../src/journal/Journal.js';

export interface JournalUnderTest {
  journal: Journal;
  /** Another instance on the same storage (another process, in effect). */
  second(): Promise<Journal>;
  /** Stores a raw line in the flow's journal, as a damaged file or a foreign publisher would. */
  corrupt(flowId: string, raw: string): Promise<void>;
  /** Every error the instances reported. */
  errors: JournalError[];
  close(): Promise<void>;
}

let flows = 0;
const flowId = () => `journal-test-${process.pid}-${++flows}`;
const at = () => new Date().toISOString();

const started = (id: string): JournalEntry => ({ kind: 'flow', flowId: id, at: at(), phase: 'started', pattern: 'feedback-loop', status: 'running', input: { n: 1 } });
const step = (id: string, n: number, snapshot: unknown = { value: `s${n}` }): JournalEntry => ({
  kind: 'step',
  flowId: id,
  at: at(),
  step: n,
  actor: 'root',
  machine: 'feedbackLoop',
  state: `s${n}`,
  event: `e${n}`,
  rootState: `s${n}`,
  snapshot,
});

/** Waits until `check` passes (follow delivers asynchronously). */
async function until(check: () => void, timeoutMs = 5_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return check();
    } catch (e) {
      if (Date.now() > deadline) throw e;
      await new Promise((r) => setTimeout(r, 20));
    }
  }
}

export function runJournalContract(name: string, make: () => Promise<JournalUnderTest>) {
  describe(`Journal contract: ${name}`, () => {
    let t: JournalUnderTest;
    beforeEach(async () => {
      t = await make();
    });
    afterEach(async () => {
      await t.close();
    });

    it('reads nothing for a flow it never saw', async () => {
      expect(await t.journal.read(flowId())).toEqual([]);
    });

    it("keeps each flow's entries in the order they were appended, flows apart", async () => {
      const a = flowId();
      const b = flowId();
      t.journal.append(started(a));
      t.journal.append(started(b));
      for (let i = 1; i <= 50; i++) {
        t.journal.append(step(a, i));
        if (i % 2 === 0) t.journal.append(step(b, i / 2));
      }
      await t.journal.flush();
      const readA = await t.journal.read(a);
      expect(readA.map((e) => (e.kind === 'step' ? e.step : e.kind))).toEqual(['flow', ...Array.from({ length: 50 }, (_, i) => i + 1)]);
      expect(readA[0]).toMatchObject({ kind: 'flow', flowId: a, phase: 'started', input: { n: 1 } });
      const readB = await (await t.second()).read(b);
      expect(readB).toHaveLength(26);
      expect(t.errors).toEqual([]);
    });

    it("writes a step's pre-serialized snapshot as given, and reads it back as JSON", async () => {
      const id = flowId();
      const snapshot = { value: { checking: 'verify' }, context: { text: 'a "quoted"\nline', n: [1, 2] }, children: {} };
      t.journal.append(step(id, 1, undefined), JSON.stringify(snapshot));
      await t.journal.flush();
      const [entry] = await t.journal.read(id);
      expect(entry?.kind === 'step' && entry.snapshot).toEqual(snapshot);
    });

    it('follows a flow: what is stored first, then each new entry once, in order, until stopped', async () => {
      const id = flowId();
      t.journal.append(started(id));
      t.journal.append(step(id, 1));
      await t.journal.flush();
      const seen: string[] = [];
      const follower = await (await t.second()).follow(id, (e) => seen.push(e.kind === 'step' ? `step${e.step}` : e.kind));
      await until(() => expect(seen).toEqual(['flow', 'step1']));
      for (let i = 2; i <= 20; i++) t.journal.append(step(id, i));
      await t.journal.flush();
      await until(() => expect(seen).toHaveLength(21));
      expect(seen).toEqual(['flow', ...Array.from({ length: 20 }, (_, i) => `step${i + 1}`)]);
      await follower.stop();
      t.journal.append(step(id, 21));
      await t.journal.flush();
      await new Promise((r) => setTimeout(r, 400));
      expect(seen).toHaveLength(21);
    });

    it('skips an unreadable entry, says so, and reads the others', async () => {
      const id = flowId();
      t.journal.append(started(id));
      await t.journal.flush();
      await t.corrupt(id, '{"kind":"step","flowId":"x"');
      await t.corrupt(id, JSON.stringify({ kind: 'nonsense', flowId: id, at: at() }));
      t.journal.append(step(id, 1));
      await t.journal.flush();
      const entries = await t.journal.read(id);
      expect(entries.map((e) => e.kind)).toEqual(['flow', 'step']);
      expect(t.errors.map((e) => e.code)).toEqual(['JOURNAL_CORRUPT_ENTRY', 'JOURNAL_CORRUPT_ENTRY']);
      expect(t.errors[0]!.message).toContain(id);
    });

    it('removes the journals it is told to, and only those', async () => {
      const gone = flowId();
      const kept = flowId();
      t.journal.append(started(gone));
      t.journal.append(started(kept));
      await t.journal.remove([gone]);
      expect(await t.journal.read(gone)).toEqual([]);
      expect(await t.journal.read(kept)).toHaveLength(1);
    });

    it('never throws on append: a flow id it cannot store under is reported', async () => {
      expect(() => t.journal.append(started('no/such id.x'))).not.toThrow();
      await t.journal.flush();
      expect(t.errors.map((e) => e.code)).toEqual(['JOURNAL_WRITE']);
      expect(t.errors[0]!.message).toContain('no/such id.x');
    });
  });
}
