import { afterAll, beforeAll, describe } from 'vitest';
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
