import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Bus } from '../../src/bus/Bus.js';
import { subjects } from '../../src/bus/subjects.js';
import { MemoryBus } from '../support/MemoryBus.js';
import { connectNatsBus } from '../../src/bus/NatsBus.js';
import { BusJournal } from '../../src/journal/BusJournal.js';
import type { JournalError } from '../../src/journal/Journal.js';
import { startNatsServer, type NatsServer } from '../../src/testing/natsServer.js';
import { runJournalContract, type JournalUnderTest } from './contract.js';

let prefixes = 0;

async function underTest(buses: Bus[], connect: () => Promise<Bus>, subjectPrefix: string): Promise<JournalUnderTest> {
  const errors: JournalError[] = [];
  const onError = (e: JournalError) => errors.push(e);
  const journal = await BusJournal.open(buses[0]!, { subjectPrefix, onError });
  const names = subjects(subjectPrefix);
  return {
    journal,
    errors,
    second: async () => {
      const bus = await connect();
      buses.push(bus);
      return BusJournal.open(bus, { subjectPrefix, onError });
    },
    corrupt: async (flowId, raw) => {
      const log = await buses[0]!.eventLog(names.historyLog, { subjects: names.historyLogSubjects });
      await log.append(names.flowHistory(flowId), raw);
    },
    close: async () => {
      await journal.close();
      await Promise.all(buses.map((b) => b.close()));
    },
  };
}

runJournalContract('BusJournal over MemoryBus', async () => {
  const bus = new MemoryBus({ subjectPrefix: 'j' });
  // Another connection to an in-process bus is the same bus.
  return underTest([bus], async () => bus, 'j');
});

describe('over a real nats-server', () => {
  let server: NatsServer;
  beforeAll(async () => {
    server = await startNatsServer();
  });
  afterAll(async () => {
    await server?.close();
  });

  runJournalContract('BusJournal over NatsBus', async () => {
    const subjectPrefix = `j${++prefixes}`;
    const connect = () => connectNatsBus({ servers: [server.url], subjectPrefix, name: 'journal-test' });
    return underTest([await connect()], connect, subjectPrefix);
  });
});

// Issue 12: every entry was a JetStream publish of its own (an acknowledged round trip), about
// ten per flow of one microtask; a flow's entries of one turn now go as one message.
describe("a flow's entries of one turn", () => {
  it('go to the stream as one message, read back as the entries they are, in order; a large one goes alone', async () => {
    const bus = new MemoryBus({ subjectPrefix: 'b' });
    const journal = await BusJournal.open(bus, { subjectPrefix: 'b' });
    const names = subjects('b');
    const flowId = 'flow-batched';
    const at = new Date().toISOString();
    journal.append({ kind: 'flow', flowId, at, phase: 'started', pattern: 'microtask', status: 'running', input: {} });
    for (let i = 0; i < 4; i++) journal.append({ kind: 'transition', flowId, at, actor: 'root', machine: 'm', event: `e${i}`, state: `s${i}` } as never);
    await journal.flush();
    const log = await bus.eventLog(names.historyLog, { subjects: names.historyLogSubjects });
    expect(await log.read(names.flowHistory(flowId))).toHaveLength(1);
    expect((await journal.read(flowId)).map((e) => (e.kind === 'transition' ? (e as { event: string }).event : e.kind))).toEqual(['flow', 'e0', 'e1', 'e2', 'e3']);

    // Entries over the batch's size each go alone (the server's payload limit is 1 MB).
    const big = 'x'.repeat(400_000);
    journal.append({ kind: 'transition', flowId, at, actor: 'root', machine: 'm', event: 'big1', state: big } as never);
    journal.append({ kind: 'transition', flowId, at, actor: 'root', machine: 'm', event: 'big2', state: big } as never);
    await journal.flush();
    expect(await log.read(names.flowHistory(flowId))).toHaveLength(3);
    expect((await journal.read(flowId)).slice(-2).map((e) => (e as { event: string }).event)).toEqual(['big1', 'big2']);
    await journal.close();
    await bus.close();
  });
});
