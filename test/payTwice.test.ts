import { spawn, type ChildProcess } from 'node:child_process';
import { connect } from '@nats-io/transport-node';
import { afterAll, describe, expect, it } from 'vitest';
import { createRemoteMicrotaskLogic } from '../src/actors/remoteMicrotask.js';
import { connectNatsBus } from '../src/bus/NatsBus.js';
import { Daemon } from '../src/daemon/Daemon.js';
import { provideFlows } from '../src/flows.js';
import { silentLogger } from '../src/log.js';
import { KvSnapshotStore } from '../src/persistence/KvSnapshotStore.js';
import { reply, startFakeAnthropic } from '../src/testing/fakeAnthropic.js';
import { startNatsServer } from '../src/testing/natsServer.js';

// What at-least-once delivery costs when a worker dies or stalls in the middle of model
// calls (issue 11, the README's Security section quotes these figures): the calls the model
// server received for the same flows without the fault, with the worker SIGKILLed, and with
// it SIGSTOPped past the queue's ack wait and then let go. Workers are `microtask worker`
// processes (the built CLI), the queue a real nats-server, the model the real SDK against
// the fake Anthropic server, which records whether each answer was written in full.
const CLI = new URL('../dist/cli.js', import.meta.url).pathname;
const children: ChildProcess[] = [];
afterAll(() => children.forEach((c) => c.kill('SIGKILL')));

const ACK_WAIT_MS = 1_500;
const FLOWS = 4;
const CALL_MS = 3_000;

const until = async (condition: () => boolean | Promise<boolean>, what: string, timeoutMs = 30_000) => {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
};

async function scenario(fault: 'none' | 'kill' | 'stall') {
  await using nats = await startNatsServer();
  await using model = await startFakeAnthropic({ replies: () => reply.text('bug', { delayMs: CALL_MS }) });
  const bus = await connectNatsBus({ servers: [nats.url], reconnectTimeWaitMs: 200 });
  const queueOptions = { ackWaitMs: ACK_WAIT_MS, maxDeliver: 5, deadLetterSubject: 'microtask.tasks.dead' };
  const daemon = new Daemon({
    bus,
    flows: provideFlows({
      microtask: createRemoteMicrotaskLogic({ bus, queue: await bus.workQueue('tasks', queueOptions), results: await bus.keyValue('results') }),
    }),
    store: new KvSnapshotStore(await bus.keyValue('snapshots')),
    logger: silentLogger,
    outRoot: '/nonexistent',
  });
  await daemon.start();
  const worker = () => {
    const child = spawn(process.execPath, [CLI, 'worker', '--concurrency', String(FLOWS)], {
      env: {
        PATH: process.env.PATH ?? '',
        MICROTASK_LOG_LEVEL: 'warn',
        MICROTASK_ACK_WAIT_MS: String(ACK_WAIT_MS),
        NATS_URL: nats.url,
        ANTHROPIC_API_KEY: 'sk-test',
        ANTHROPIC_BASE_URL: model.url,
      },
      stdio: ['ignore', 'ignore', 'ignore'],
    });
    children.push(child);
    return child;
  };
  const client = await connect({ servers: nats.url });
  try {
    const first = worker();
    const flowIds: string[] = [];
    for (let i = 0; i < FLOWS; i++) {
      const input = { taskType: 'classify', system: 'Classify the ticket.', prompt: `Which class is ticket ${i}?`, timeoutMs: 60_000 };
      flowIds.push((await client.request('microtask.flow.start.microtask', JSON.stringify({ input }), { timeout: 5_000 })).json<{ flowId: string }>().flowId);
    }
    await until(() => model.requests.length === FLOWS, 'the first worker to call the model for every flow');
    if (fault === 'kill') first.kill('SIGKILL');
    if (fault === 'stall') first.kill('SIGSTOP');
    if (fault !== 'none') worker();

    const done = async () => {
      for (const flowId of flowIds) {
        const status = (await client.request('microtask.flow.get', JSON.stringify({ flowId }), { timeout: 5_000 })).json<{ status: string }>();
        if (status.status !== 'done') return false;
      }
      return true;
    };
    await until(done, 'every flow to be done');
    if (fault === 'stall') {
      // Let go once the flows are done: the stalled calls' answers wait in its sockets.
      first.kill('SIGCONT');
      await new Promise((r) => setTimeout(r, ACK_WAIT_MS));
    }
    const answered = model.requests.filter((r) => r.answeredAt !== undefined && !r.closedEarly).length;
    return { flows: FLOWS, calls: model.requests.length, answeredInFull: answered, cutShort: model.closedEarly() };
  } finally {
    await client.close();
    await daemon.stop();
    await bus.close();
  }
}

describe('calls paid for the same flows, with and without a worker fault', () => {
  it('no fault: one call a flow; SIGKILL mid-call: the calls in flight are made again (cut short first); SIGSTOP past the ack wait: made again and both answered', async () => {
    const none = await scenario('none');
    const kill = await scenario('kill');
    const stall = await scenario('stall');
    console.log(JSON.stringify({ none, kill, stall }));
    expect(none).toEqual({ flows: FLOWS, calls: FLOWS, answeredInFull: FLOWS, cutShort: 0 });
    // Every call in flight on the killed worker was cut short and made again by the other.
    expect(kill).toEqual({ flows: FLOWS, calls: 2 * FLOWS, answeredInFull: FLOWS, cutShort: FLOWS });
    // The stalled worker's calls were answered too (into its sockets): each flow paid twice in full.
    expect(stall).toEqual({ flows: FLOWS, calls: 2 * FLOWS, answeredInFull: 2 * FLOWS, cutShort: 0 });
  }, 120_000);
});
