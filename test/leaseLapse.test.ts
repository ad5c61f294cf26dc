import { mkdtemp, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { handWrittenAnswer } from '../examples/offline/answers.js';
import { connectNatsBus } from '../src/bus/NatsBus.js';
import { FlowHost } from '../src/flowHost.js';
import { provideFlows } from '../src/flows.js';
import { KvLeaseBoard } from '../src/leases.js';
import { silentLogger } from '../src/log.js';
import { KvSnapshotStore } from '../src/persistence/KvSnapshotStore.js';
import { startNatsServer } from '../src/testing/natsServer.js';
import { scripted } from './support/flows.js';
import { startRelay } from './support/relay.js';

// Leases renewed per daemon (issue 15): a host cut off from NATS stops running its flows
// before its lease has passed, so the host that takes them over is the only one running
// them; back on the network, it finds them taken (its index emptied) and does not run
// them again. Two FlowHosts over a real nats-server, one through a relay that is cut.

const LEASE_MS = 1_500;
const example = JSON.parse(await readFile(new URL('../examples/reentrant.json', import.meta.url), 'utf8')) as Record<string, unknown>;
const { review: _review, ...withoutReview } = example;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const until = async (what: string, check: () => boolean | Promise<boolean>, ms = 20_000) => {
  const end = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
};


describe('a host whose heartbeat stops landing', () => {
  it('stops its flows before the lease passes; the other takes them over; back, it leaves them to the other', async () => {
    await using nats = await startNatsServer();
    const relay = await startRelay(nats.port);
    const dir = await mkdtemp(join(tmpdir(), 'lease-lapse-'));
    const runtime = scripted((request) => handWrittenAnswer(request));
    const busA = await connectNatsBus({ servers: [relay.url], reconnectTimeWaitMs: 100 });
    const busB = await connectNatsBus({ servers: [nats.url] });
    const host = async (bus: typeof busA, owner: string) =>
      new FlowHost({
        flows: provideFlows({ microtask: runtime.microtask }),
        store: new KvSnapshotStore(await bus.keyValue('snapshots')),
        logger: silentLogger,
        outRoot: dir,
        storeRetryMs: 500,
        lease: { owner, durationMs: LEASE_MS, board: new KvLeaseBoard(await bus.keyValue('leases')) },
      });
    const a = await host(busA, 'host-a');
    const b = await host(busB, 'host-b');
    const store = new KvSnapshotStore(await busB.keyValue('snapshots'));
    try {
      a.startLeases();
      b.startLeases();
      const ids = [await a.start('reentrant', { ...withoutReview, personReview: {} }), await a.start('reentrant', { ...withoutReview, personReview: {} })];
      await until('both flows waiting at host-a', async () => (await Promise.all(ids.map((id) => store.load(id)))).every((s) => s?.record.state === 'awaitingReview'));
      expect(ids.map((id) => a.waiting(id)?.length)).toEqual([1, 1]);

      relay.cut();
      const cutAt = Date.now();
      // Host A stops running them on its own, before the lease has passed since its last heartbeat.
      await until('host-a stopping its flows', () => ids.every((id) => a.running(id) === undefined));
      expect(Date.now() - cutAt).toBeLessThan(LEASE_MS + LEASE_MS / 3);
      await until('host-b taking the flows over', () => ids.every((id) => b.running(id) !== undefined));
      expect(ids.map((id) => b.waiting(id)?.length)).toEqual([1, 1]);
      expect((await store.load(ids[0]!))!.record.owner).toBe('host-b');

      relay.restore();
      // Back: host A's heartbeat lands again (its key is fresh), and it claims nothing.
      const board = new KvLeaseBoard(await busB.keyValue('leases'));
      await until("host-a's heartbeat landing again", async () => (await board.heartbeats()).some((h) => h.owner === 'host-a' && Date.now() - h.at < LEASE_MS / 2));
      await sleep(LEASE_MS);
      expect(ids.map((id) => a.running(id))).toEqual([undefined, undefined]);
      expect(await board.held('host-a')).toEqual([]);
      expect((await board.held('host-b')).sort()).toEqual([...ids].sort());

      // The flows go on at host B.
      expect(await b.send(ids[0]!, { eventId: 'r1', type: 'review', data: { approved: true, feedback: 'ok' }, sentAt: Date.now() })).toBe('applied');
      expect((await b.finished(ids[0]!))!.status).toBe('done');
      await until('the ended flow out of the index', async () => !(await board.held('host-b')).includes(ids[0]!));
    } finally {
      await a.stop();
      await b.stop();
      await busA.close();
      await busB.close();
      await relay.close();
    }
  }, 60_000);
});
