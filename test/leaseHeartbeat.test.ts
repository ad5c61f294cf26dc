import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Kvm } from '@nats-io/kv';
import { connect } from '@nats-io/transport-node';
import { afterAll, describe, expect, it } from 'vitest';
import { startFakeAnthropic } from '../src/testing/fakeAnthropic.js';
import { freePort, startNatsServer } from '../src/testing/natsServer.js';
import { handWrittenReplies } from './support/handWrittenModel.js';

// Issue 15 item 2 / issue 14 item 5: flows waiting for a person cost their daemon's store
// nothing while they wait. Leases are renewed per daemon (one heartbeat), not per flow
// (before: every flow's record rewritten every third of the lease, and every running
// record read on every tick); a killed daemon's waiting flows are still taken over by
// another after the lease, found through its ownership index; an ended flow leaves it.
// Real daemon and worker processes (the built CLI), a real nats-server.
const CLI = new URL('../dist/cli.js', import.meta.url).pathname;
const children: ChildProcess[] = [];
afterAll(() => children.forEach((c) => c.kill('SIGKILL')));

const LEASE_MS = 1_500;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const ownerKey = (owner: string) => Buffer.from(owner, 'utf8').toString('base64url');

async function setup(monitorPort?: number) {
  const nats = await startNatsServer(monitorPort ? { args: ['-m', String(monitorPort)] } : {});
  const model = await startFakeAnthropic({ replies: handWrittenReplies(0) });
  const env = (extra: Record<string, string>) => ({
    PATH: process.env.PATH ?? '',
    NATS_URL: nats.url,
    ANTHROPIC_API_KEY: 'sk-test',
    ANTHROPIC_BASE_URL: model.url,
    MICROTASK_LEASE_MS: String(LEASE_MS),
    MICROTASK_LOG_LEVEL: 'warn',
    MICROTASK_INSPECTOR_PORT: '0',
    ...extra,
  });
  const run = async (args: string[], extra: Record<string, string>) => {
    const child = spawn(process.execPath, [CLI, ...args], { env: env({ MICROTASK_STATE_DIR: await mkdtemp(join(tmpdir(), 'lease-hb-')), ...extra }), stdio: ['ignore', 'ignore', 'inherit'] });
    children.push(child);
    return child;
  };
  const client = await connect({ servers: nats.url, name: 'test-client' });
  const request = async (subject: string, payload: unknown) => (await client.request(subject, JSON.stringify(payload), { timeout: 10_000 })).json<any>();
  const { review: _review, ...example } = JSON.parse(await readFile('examples/reentrant.json', 'utf8'));
  /** Starts `n` re-entrant flows that wait for a person's review (the first once a daemon serves). */
  const startWaiting = async (n: number) => {
    const ids: string[] = [];
    for (let i = 0; i < n; i++) {
      let started: any;
      for (let attempt = 0; attempt < 100 && !started?.ok; attempt++) {
        started = await request('microtask.flow.start.reentrant', { input: { ...example, personReview: {} } }).catch(() => undefined);
        if (!started?.ok) await sleep(100);
      }
      expect(started.ok).toBe(true);
      ids.push(started.flowId);
    }
    return ids;
  };
  const kv = async (bucket: string) => new Kvm(client).open(bucket);
  const record = async (flowId: string) => (await (await kv('MICROTASK_snapshots')).get(`snapshot.${flowId}`))?.json<any>();
  // Each check is raced against the time left: a read that hangs on a loaded machine (a KV
  // listing, a request) counts as "not yet", and the wait ends naming what it waited for,
  // instead of the whole test timing out with no word of where (CI, 7 Dec).
  const until = async (what: string, condition: () => Promise<boolean>, timeoutMs = 60_000) => {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out waiting for ${what}`);
      const met = await Promise.race([condition().catch(() => false), sleep(Math.min(left, 10_000)).then(() => false)]);
      if (met) return;
      await sleep(100);
    }
  };
  const allWaiting = (ids: string[]) => async () =>
    (await Promise.all(ids.map((flowId) => request('microtask.flow.get', { flowId }).catch(() => undefined)))).every((r) => r?.state === 'awaitingReview');
  const leaseKeys = async () => {
    const keys: string[] = [];
    for await (const k of await (await kv('MICROTASK_leases')).keys()) keys.push(k);
    return keys;
  };
  return {
    nats,
    model,
    run,
    client,
    request,
    startWaiting,
    record,
    until,
    allWaiting,
    leaseKeys,
    async close() {
      for (const child of children.splice(0)) child.kill('SIGKILL');
      await client.close();
      await model.close();
      await nats.close();
    },
  };
}

describe('leases renewed per daemon (issue 15)', () => {
  it('200 flows waiting for a person: the daemon sends the server fewer messages over four leases than there are flows', async () => {
    const FLOWS = 200;
    const monitorPort = await freePort();
    const s = await setup(monitorPort);
    try {
      // The worker in its own process: the daemon's connection carries the daemon's traffic only.
      await s.run(['worker'], {});
      await s.run(['daemon'], { MICROTASK_DAEMON_ID: 'daemon-idle' });
      const ids = await s.startWaiting(FLOWS);
      await s.until('every flow waiting', s.allWaiting(ids));
      const sent = async () => {
        const connz = (await (await fetch(`http://127.0.0.1:${monitorPort}/connz?limit=1024`)).json()) as { connections: { name?: string; in_msgs: number }[] };
        const daemon = connz.connections.find((c) => c.name?.startsWith('microtask-daemon@'));
        if (!daemon) throw new Error('no daemon connection on the server');
        return daemon.in_msgs;
      };
      // Settled: the waits' saves and announcements are done.
      await sleep(1_000);
      const before = await sent();
      await sleep(4 * LEASE_MS);
      const during = (await sent()) - before;
      console.log(`daemon → NATS over ${4 * LEASE_MS} ms with ${FLOWS} flows waiting: ${during} messages`);
      // Renewed per flow, each of the 200 records is written every third of the lease:
      // 2,400 writes in this window. One heartbeat and one read of the heartbeats per tick is
      // a few dozen messages, whatever the number of flows.
      expect(during).toBeLessThan(FLOWS);
      // The records name their owner; no per-flow lease is written any more.
      const stored = await s.record(ids[0]!);
      expect(stored).toMatchObject({ status: 'running', owner: 'daemon-idle' });
      expect(stored.leaseUntil).toBeUndefined();
    } finally {
      await s.close();
    }
  }, 180_000);

  it("a killed daemon's waiting flows are taken over through its index after the lease; an ended flow leaves the index", async () => {
    const s = await setup();
    try {
      await s.run(['worker'], {});
      const a = await s.run(['daemon'], { MICROTASK_DAEMON_ID: 'daemon-a' });
      const ids = await s.startWaiting(10);
      await s.until('every flow waiting', s.allWaiting(ids));
      const keys = await s.leaseKeys();
      expect(keys).toContain(`hb.${ownerKey('daemon-a')}`);
      for (const flowId of ids) expect(keys).toContain(`own.${ownerKey('daemon-a')}.${flowId}`);

      await s.run(['daemon'], { MICROTASK_DAEMON_ID: 'daemon-b' });
      a.kill('SIGKILL');
      await s.until('every flow owned by daemon-b', async () => (await Promise.all(ids.map((id) => s.record(id)))).every((r) => r?.owner === 'daemon-b'));
      await s.until("daemon-a's index emptied", async () => !(await s.leaseKeys()).some((k) => k.startsWith(`own.${ownerKey('daemon-a')}.`)));
      const after = await s.leaseKeys();
      for (const flowId of ids) expect(after).toContain(`own.${ownerKey('daemon-b')}.${flowId}`);
      // Still waiting, now at daemon-b: a person's answer finishes one.
      await s.until('the flows waiting at daemon-b', s.allWaiting(ids));
      const answered = ids[0]!;
      const sent = await s.request('microtask.flow.send', { flowId: answered, type: 'review', data: { approved: true, feedback: 'fine' } });
      expect(sent.ok).toBe(true);
      await s.until('the answered flow done', async () => (await s.record(answered))?.status === 'done');
      await s.until('the ended flow out of the index', async () => !(await s.leaseKeys()).includes(`own.${ownerKey('daemon-b')}.${answered}`));
      expect((await s.leaseKeys()).filter((k) => k.startsWith(`own.${ownerKey('daemon-b')}.`))).toHaveLength(ids.length - 1);
      // The dead daemon's heartbeat goes once its index is empty (two leases after it stopped).
      await s.until("daemon-a's heartbeat removed", async () => !(await s.leaseKeys()).includes(`hb.${ownerKey('daemon-a')}`));
    } finally {
      await s.close();
    }
  }, 180_000);
});
