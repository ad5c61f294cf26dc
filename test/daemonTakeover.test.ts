import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { jetstream } from '@nats-io/jetstream';
import { connect } from '@nats-io/transport-node';
import { afterAll, describe, expect, it } from 'vitest';
import { startFakeAnthropic } from '../src/testing/fakeAnthropic.js';
import { startNatsServer } from '../src/testing/natsServer.js';
import { handWrittenReplies } from './support/handWrittenModel.js';

// Two `microtask daemon --worker` processes on one NATS: the one driving a flow is
// SIGKILLed; the other takes the flow over when the lease runs out, and it finishes once.
const CLI = new URL('../dist/cli.js', import.meta.url).pathname;
const children: ChildProcess[] = [];
afterAll(() => children.forEach((c) => c.kill('SIGKILL')));

describe('two daemons sharing NATS', () => {
  it('a flow whose daemon was killed is taken over by the other after the lease, and finishes once', async () => {
    await using nats = await startNatsServer();
    await using model = await startFakeAnthropic({ replies: handWrittenReplies(150) });
    const env = (id: string, state: string) => ({
      PATH: process.env.PATH ?? '',
      NATS_URL: nats.url,
      ANTHROPIC_API_KEY: 'sk-test',
      ANTHROPIC_BASE_URL: model.url,
      MICROTASK_DAEMON_ID: id,
      MICROTASK_LEASE_MS: '1500',
      MICROTASK_ACK_WAIT_MS: '1500',
      MICROTASK_STATE_DIR: state,
      MICROTASK_LOG_LEVEL: 'warn',
      // Two daemons at once: each serves its inspector page on a port of its own.
      MICROTASK_INSPECTOR_PORT: '0',
    });
    const daemon = (id: string, state: string) => {
      const child = spawn(process.execPath, [CLI, 'daemon', '--worker'], { env: env(id, state), stdio: ['ignore', 'ignore', 'pipe'] });
      children.push(child);
      return child;
    };
    const client = await connect({ servers: nats.url });
    const request = async (subject: string, payload: unknown) =>
      (await client.request(subject, JSON.stringify(payload), { timeout: 10_000 })).json<any>();

    const a = daemon('daemon-a', await mkdtemp(join(tmpdir(), 'takeover-a-')));
    // Until daemon A serves, requests have no responders.
    let started: any;
    for (let i = 0; i < 100 && !started?.ok; i++) {
      started = await request('microtask.toolbuild.request', JSON.parse(await readFile('examples/api-tester.json', 'utf8'))).catch(() => undefined);
      if (!started?.ok) await new Promise((r) => setTimeout(r, 100));
    }
    expect(started.ok).toBe(true);
    const flowId = started.flowId as string;
    while (model.requests.length < 4) await new Promise((r) => setTimeout(r, 20));

    daemon('daemon-b', await mkdtemp(join(tmpdir(), 'takeover-b-')));
    a.kill('SIGKILL');

    let status: any;
    for (let i = 0; i < 600 && status?.status !== 'done'; i++) {
      status = await request('microtask.flow.get', { flowId }).catch(() => undefined);
      if (status?.status !== 'done') await new Promise((r) => setTimeout(r, 100));
    }
    expect(status).toMatchObject({ status: 'done', output: { status: 'done', name: 'api-tester' } });

    // Exactly one done message, and events without gaps across the two daemons.
    const js = jetstream(client);
    const done = await js.consumers.get('MICROTASK_LOG_flows', { filter_subjects: `microtask.flow.${flowId}.done` });
    const info = await done.info();
    expect(info.num_pending).toBe(1);
    const events = await js.consumers.get('MICROTASK_LOG_flows', { filter_subjects: `microtask.flow.${flowId}.events` });
    const seqs: number[] = [];
    const messages = await events.consume();
    for await (const m of messages) {
      const event = m.json<{ seq: number; status: string }>();
      seqs.push(event.seq);
      if (event.status !== 'running') break;
    }
    messages.stop();
    // The event a crash kept from being announced is announced again on takeover: the same
    // seq may come twice, none is missing.
    const distinct = [...new Set(seqs)];
    expect(distinct).toEqual(distinct.map((_, i) => i + 1));
    await client.close();
  }, 90_000);
});
