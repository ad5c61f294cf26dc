import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Bus } from '../../src/bus/Bus.js';
import { connectNatsBus } from '../../src/bus/NatsBus.js';
import { MemoryBus } from '../support/MemoryBus.js';
import { subjects } from '../../src/bus/subjects.js';
import { BusInbox } from '../../src/inbox/BusInbox.js';
import { LmdbInbox } from '../../src/inbox/LmdbInbox.js';
import { LmdbStore } from '../../src/persistence/LmdbStore.js';
import { startNatsServer, type NatsServer } from '../../src/testing/natsServer.js';
import { runInboxContract, type InboxUnderTest } from './contract.js';

const dirs: string[] = [];
afterAll(async () => {
  await Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true })));
});

runInboxContract('LmdbInbox', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'inbox-'));
  dirs.push(dir);
  const errors: string[] = [];
  const onError = (m: string) => errors.push(m);
  const db = await LmdbStore.open(dir);
  let n = 0;
  return {
    inbox: new LmdbInbox(db, { onError, pollMs: 50 }),
    // Another process opens its own handle on the directory; in one process the environment is shared.
    second: async () => new LmdbInbox(await LmdbStore.open(dir), { onError, pollMs: 50 }),
    raw: async (flowId, text) => void (await db.dbs.inbox.put([flowId, Date.now() * 1000 - 1_000_000 + n++, 'raw'], text)),
    errors,
    close: async () => undefined,
  };
});

async function onBus(buses: Bus[], connect: () => Promise<Bus>, subjectPrefix: string): Promise<InboxUnderTest> {
  const errors: string[] = [];
  const onError = (m: string) => errors.push(m);
  const names = subjects(subjectPrefix);
  return {
    inbox: await BusInbox.open(buses[0]!, { subjectPrefix, onError }),
    second: async () => {
      const bus = await connect();
      buses.push(bus);
      return BusInbox.open(bus, { subjectPrefix, onError });
    },
    // A client with no code of this project publishes whatever it likes to the subject.
    raw: async (flowId, text) => {
      const log = await buses[0]!.eventLog(names.inboxLog, { subjects: [names.flowInbox('*')] });
      await log.append(names.flowInbox(flowId), text);
    },
    errors,
    close: async () => {
      await Promise.all(buses.map((b) => b.close()));
    },
  };
}

let prefixes = 0;
runInboxContract('BusInbox over MemoryBus', async () => {
  const bus = new MemoryBus({ subjectPrefix: 'i' });
  return onBus([bus], async () => bus, 'i');
});

describe('over a real nats-server', () => {
  let server: NatsServer;
  beforeAll(async () => {
    server = await startNatsServer();
  });
  afterAll(async () => {
    await server?.close();
  });
  it("takes when an event was sent from the stream's clock, not from a sentAt the sender put in it", async () => {
    const subjectPrefix = `i${++prefixes}`;
    const buses = [await connectNatsBus({ servers: [server.url], subjectPrefix, name: 'inbox-test' })];
    const t = await onBus(buses, async () => buses[0]!, subjectPrefix);
    try {
      const before = Date.now();
      await t.raw('reentrant-backdated-00000001', JSON.stringify({ eventId: 'back', type: 'review', data: { approved: true }, sentAt: 1 }));
      const [event] = await t.inbox.read('reentrant-backdated-00000001');
      expect(event!.sentAt).toBeGreaterThanOrEqual(before - 1_000);
    } finally {
      await t.close();
    }
  });

  runInboxContract('BusInbox over NatsBus', async () => {
    const subjectPrefix = `i${++prefixes}`;
    const connect = () => connectNatsBus({ servers: [server.url], subjectPrefix, name: 'inbox-test' });
    return onBus([await connect()], connect, subjectPrefix);
  });
});
