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

// A daemon over a real nats-server runs flows that wait for a person; it is SIGKILLed
// while they wait; a plain NATS client (no code of this project) sends the approval while
// no daemon runs; a restarted daemon finishes the flow with it, applied once, and a wait
// whose deadline passed meanwhile takes its timeout path.
const CLI = new URL('../dist/cli.js', import.meta.url).pathname;
const children: ChildProcess[] = [];
afterAll(() => children.forEach((c) => c.kill('SIGKILL')));

describe('a flow waiting for a person, over NATS', () => {
  it('survives a SIGKILL of its daemon; an approval published while none runs is applied once on restart', async () => {
    await using nats = await startNatsServer();
    await using model = await startFakeAnthropic({ replies: handWrittenReplies(0) });
    const state = await mkdtemp(join(tmpdir(), 'wait-nats-'));
    const env = {
      PATH: process.env.PATH ?? '',
      NATS_URL: nats.url,
      ANTHROPIC_API_KEY: 'sk-test',
      ANTHROPIC_BASE_URL: model.url,
      MICROTASK_LEASE_MS: '1500',
      MICROTASK_STATE_DIR: state,
      MICROTASK_LOG_LEVEL: 'warn',
      MICROTASK_INSPECTOR_PORT: '0',
    };
    const daemon = () => {
      const child = spawn(process.execPath, [CLI, 'daemon', '--worker'], { env, stdio: ['ignore', 'ignore', 'pipe'] });
      children.push(child);
      return child;
    };
    const client = await connect({ servers: nats.url });
    const request = async (subject: string, payload: unknown) =>
      (await client.request(subject, JSON.stringify(payload), { timeout: 10_000 })).json<any>();
    const { review: _review, ...example } = JSON.parse(await readFile('examples/reentrant.json', 'utf8'));
    const poll = async (flowId: string, done: (r: any) => boolean) => {
      let record: any;
      for (let i = 0; i < 300 && !done(record); i++) {
        record = await request('microtask.flow.get', { flowId }).catch(() => undefined);
        if (!done(record)) await new Promise((r) => setTimeout(r, 100));
      }
      return record;
    };

    let first = daemon();
    let started: any;
    for (let i = 0; i < 100 && !started?.ok; i++) {
      started = await request('microtask.flow.start.reentrant', { input: { ...example, personReview: {} } }).catch(() => undefined);
      if (!started?.ok) await new Promise((r) => setTimeout(r, 100));
    }
    expect(started.ok).toBe(true);
    const approved = started.flowId as string;
    const timed = (await request('microtask.flow.start.reentrant', { input: { ...example, personReview: { maxWaitMs: 2_000 } } })).flowId as string;

    const waiting = await poll(approved, (r) => r?.waiting);
    expect(waiting).toMatchObject({ status: 'running', state: 'awaitingReview', waiting: [{ actor: 'root', events: ['review'] }] });
    expect((await poll(timed, (r) => r?.waiting)).waiting[0].until).toBeDefined();

    // What the flow does not wait for is refused, in one line that says what it does.
    const refused = await request('microtask.flow.send', { flowId: approved, type: 'score', data: { score: 1 } });
    expect(refused).toEqual({ ok: false, error: { code: 'EVENT_NOT_ACCEPTED', message: expect.stringContaining('it waits for: review') } });
    const invalid = await request('microtask.flow.send', { flowId: approved, type: 'review', data: { approved: 'yes' } });
    expect(invalid.error.code).toBe('INVALID_EVENT');

    first.kill('SIGKILL');
    await new Promise((resolve) => first.on('exit', resolve));

    // No daemon runs: a plain NATS client publishes the person's answer to the flow's inbox, twice.
    const js = jetstream(client);
    const answer = JSON.stringify({ eventId: 'approval-1', type: 'review', data: { approved: true, feedback: 'ship it' } });
    await js.publish(`microtask.flow.${approved}.inbox`, answer);
    await js.publish(`microtask.flow.${approved}.inbox`, answer);
    // The other flow's deadline passes while nothing runs it.
    await new Promise((r) => setTimeout(r, 2_500));

    const callsBefore = model.requests.length;
    first = daemon();
    const done = await poll(approved, (r) => r?.status === 'done');
    expect(done).toMatchObject({ status: 'done', output: { status: 'done', approved: true, passes: 1 } });
    expect(done.output.revisions).toHaveLength(1);
    expect(done.output.revisions[0].review).toEqual({ approved: true, feedback: 'ship it', by: 'person' });
    expect(done.waiting).toBeUndefined();

    const expired = await poll(timed, (r) => r?.status === 'done');
    expect(expired.output).toMatchObject({ status: 'exhausted', approved: false });
    expect(expired.output.reason).toContain('no person reviewed pass 0 within 2000 ms');
    // Nothing was paid for twice: both flows had made their one call before the kill.
    expect(model.requests.length).toBe(callsBefore);

    // The same answer sent again after the end is known as applied; a new one is refused: the flow ended.
    const retried = await request('microtask.flow.send', { flowId: approved, eventId: 'approval-1', type: 'review', data: { approved: true } });
    expect(retried).toEqual({ ok: true, flowId: approved, eventId: 'approval-1', duplicate: true });
    const late = await request('microtask.flow.send', { flowId: approved, eventId: 'approval-2', type: 'review', data: { approved: true } });
    expect(late.error.code).toBe('FLOW_FINISHED');
    await client.close();
  }, 90_000);
});
