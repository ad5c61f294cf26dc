import { describe, expect, it } from 'vitest';
import { latestSteps, type JournalEntry } from '../../src/journal/Journal.js';

const step = (n: number, state: string): JournalEntry =>
  ({ kind: 'step', flowId: 'f', at: `t${n}${state}`, step: n, actor: 'root', machine: 'm', state, event: 'e', rootState: state, snapshot: { value: state } }) as JournalEntry;
const resumed: JournalEntry = { kind: 'flow', flowId: 'f', at: 't', phase: 'resumed', pattern: 'microtask', status: 'running' } as JournalEntry;

describe('latestSteps', () => {
  it('keeps each step’s last entry where it stands (a step journaled, not saved, then written again by the resumed run)', () => {
    const entries = [step(1, 'a'), step(2, 'b'), step(3, 'lost'), resumed, step(3, 'c'), step(4, 'd')];
    expect(latestSteps(entries)).toEqual([step(1, 'a'), step(2, 'b'), resumed, step(3, 'c'), step(4, 'd')]);
  });

  it('leaves entries with no repeated step as they are', () => {
    const entries = [step(1, 'a'), resumed, step(2, 'b')];
    expect(latestSteps(entries)).toEqual(entries);
  });
});
