import { mkdtemp, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { assign, setup } from 'xstate';
import { z } from 'zod';
import { connectNatsBus } from '../src/bus/NatsBus.js';
import { loadConfig } from '../src/config.js';
import { silentLogger } from '../src/log.js';
import { createOrchestrator, defineFlow, OrchestratorError, type FlowEvent, type FlowsModule, type Orchestrator } from '../src/index.js';
import { useFlowsModule } from '../src/flows.js';
import { ScriptedModel } from '../src/actors/model/ScriptedModel.js';
import { startDaemonService, startWorkerService } from '../src/services.js';
import { reply, startFakeAnthropic, type FakeAnthropic } from '../src/testing/fakeAnthropic.js';
import { startNatsServer, type NatsServer } from '../src/testing/natsServer.js';
import { countingTasks, enrichFlow } from './support/taskFlows.js';

// The orchestrator a program embeds: one contract, run against flows in this process (a
// state directory) and against a daemon and a worker on a nats-server of its own; the
// model is the real Anthropic SDK against the fake Messages API.

const microtask = JSON.parse(await readFile(new URL('../examples/microtask.json', import.meta.url), 'utf8')) as Record<string, unknown>;
const { review: _review, ...reentrant } = JSON.parse(await readFile(new URL('../examples/reentrant.json', import.meta.url), 'utf8')) as Record<string, unknown>;
/** A reentrant flow whose pass waits for a person's review. */
const personReview = { ...reentrant, personReview: {} };

/**
 * A program's own flow: one microtask whose answer is checked against the module's schema
 * `loud`, its task type's fallback the module's too. Embedded it is given to the
 * orchestrator; the daemon and the worker load it as `--flows` makes them.
 */
const shout = defineFlow({
  name: 'shout',
  version: 1,
  input: z.object({ text: z.string().min(1), key: z.string().optional() }),
  machine: (blocks) =>
    setup({
      types: {} as { input: { text: string; key: string }; context: { input: { text: string; key: string }; said: unknown } },
      actors: { microtask: blocks.microtask },
    }).createMachine({
      id: 'shout',
      context: ({ input }) => ({ input, said: undefined }),
      initial: 'asking',
      states: {
        asking: {
          invoke: {
            src: 'microtask',
            input: ({ context }: { context: { input: { text: string; key: string } } }) => ({ taskType: 'shout', key: `${context.input.key}/shout/0`, system: 'You shout.', prompt: `Shout this: ${context.input.text}`, answer: 'loud' }),
            onDone: {
              target: 'done',
              actions: assign({ said: ({ event }) => ((r: { success: boolean; result?: unknown; fallback?: unknown }) => (r.success ? r.result : r.fallback))(event.output) }),
            },
          },
        },
        done: { type: 'final' },
      },
      output: ({ context }) => ({ status: 'done', result: context.said }),
    }),
});
const ownModule: FlowsModule = {
  flows: [shout],
  answers: { loud: z.object({ loud: z.string() }) },
  fallbacks: { shout: () => ({ loud: 'FALLBACK' }) },
};

let model: FakeAnthropic;
let nats: NatsServer;
const stops: Array<() => Promise<void>> = [];
let env: Record<string, string>;

/** Slow answers for a prompt that asks for them, the first time only: a microtask still in flight when its orchestrator closes. */
let slowOnce = true;

beforeAll(async () => {
  model = await startFakeAnthropic({
    replies: (request) => {
      if (request.lastUserText.includes('Shout this: FAIL')) return reply.error(400, 'invalid_request_error', 'refused, for the fallback');
      if (request.lastUserText.includes('Shout this:')) return reply.tool(request.body.tools![0]!.name, { loud: 'HELLO' });
      if (request.lastUserText.includes('SLOW') && slowOnce) {
        slowOnce = false;
        return reply.text('A slow summary.', { delayMs: 4_000 });
      }
      return reply.text('A release note for users.');
    },
  });
  env = { ANTHROPIC_API_KEY: 'sk-test', ANTHROPIC_BASE_URL: model.url };
  nats = await startNatsServer();
  const config = loadConfig({ ...env, NATS_URL: nats.url, MICROTASK_STATE_DIR: await mkdtemp(join(tmpdir(), 'orch-daemon-')) });
  // What `--flows` does in the daemon's and worker's processes.
  useFlowsModule(ownModule);
  const bus = await connectNatsBus({ servers: [nats.url] });
  const daemon = await startDaemonService(bus, config, silentLogger, { journal: false });
  const workerBus = await connectNatsBus({ servers: [nats.url] });
  const worker = await startWorkerService(workerBus, config, silentLogger);
  stops.push(async () => {
    await daemon.stop();
    await worker.stop();
    await bus.close();
    await workerBus.close();
  });
});

afterAll(async () => {
  useFlowsModule({ flows: [] });
  for (const stop of stops.splice(0).reverse()) await stop();
  await nats?.close();
  await model?.close();
});

const embedded = async () => createOrchestrator({ stateDir: await mkdtemp(join(tmpdir(), 'orch-')), env, flows: ownModule });
const overNats = () => createOrchestrator({ natsUrl: nats.url });

const refusal = (p: Promise<unknown>) =>
  p.then(
    () => {
      throw new Error('expected a refusal');
    },
    (e: unknown) => {
      expect(e).toBeInstanceOf(OrchestratorError);
      return e as OrchestratorError;
    },
  );

async function waitingFor(orchestrator: Orchestrator, flowId: string) {
  const end = Date.now() + 15_000;
  for (;;) {
    const record = await orchestrator.get(flowId);
    if (record?.waiting?.length) return record;
    if (Date.now() > end) throw new Error(`flow ${flowId} never waited: ${JSON.stringify(record)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function collect(events: AsyncIterable<FlowEvent>): Promise<FlowEvent[]> {
  const seen: FlowEvent[] = [];
  for await (const event of events) seen.push(event);
  return seen;
}

describe.each([
  ['embedded', embedded],
  ['over NATS', overNats],
])('the orchestrator, %s', (mode, create) => {
  let orchestrator: Orchestrator;
  beforeAll(async () => {
    orchestrator = await create();
  });
  afterAll(async () => {
    await orchestrator?.close();
  });

  it('says which it is', () => {
    expect(orchestrator.mode).toBe(mode === 'embedded' ? 'embedded' : 'nats');
  });

  it('starts a pattern and gives its end; get and list show it; a requestId retried answers the same flow', async () => {
    const flowId = await orchestrator.start('microtask', microtask, { requestId: `summary-${mode}` });
    expect(await orchestrator.start('microtask', microtask, { requestId: `summary-${mode}` })).toBe(flowId);
    const done = await orchestrator.done(flowId);
    expect(done).toMatchObject({ flowId, pattern: 'microtask', status: 'done', requestId: `summary-${mode}`, output: { status: 'done' } });
    expect(done).not.toHaveProperty('ok');
    expect(await orchestrator.get(flowId)).toEqual(done);
    expect((await orchestrator.list()).map((f) => f.flowId)).toContain(flowId);
    expect((await orchestrator.list({ status: 'done' })).find((f) => f.flowId === flowId)).toMatchObject({ pattern: 'microtask', status: 'done' });
    expect((await orchestrator.list({ status: ['running', 'cancelled'] })).map((f) => f.flowId)).not.toContain(flowId);
    // Retried with another input: refused, not answered with the first flow.
    expect((await refusal(orchestrator.start('microtask', { ...microtask, prompt: 'Other.' }, { requestId: `summary-${mode}` }))).code).toBe('REQUEST_ID_CONFLICT');
  });

  it("runs the program's own flow: its answer schema and its task type's fallback, by name", async () => {
    const answered = await orchestrator.start('shout', { text: 'hello' });
    expect(await orchestrator.done(answered)).toMatchObject({ pattern: 'shout', status: 'done', output: { result: { loud: 'HELLO' } } });
    const fellBack = await orchestrator.start('shout', { text: 'FAIL' });
    expect(await orchestrator.done(fellBack)).toMatchObject({ status: 'done', output: { result: { loud: 'FALLBACK' } } });
    expect((await refusal(orchestrator.start('shout', { text: '' }))).code).toBe('INVALID_INPUT');
  });

  it('refuses an unknown flow name and an invalid input with their codes, in one error each', async () => {
    const unknown = await refusal(orchestrator.start('no-such-flow', {}));
    expect(unknown.code).toBe('UNKNOWN_PATTERN');
    expect(unknown.message).toContain('reentrant');
    const invalid = await refusal(orchestrator.start('reentrant', { task: 1 }));
    expect(invalid.code).toBe('INVALID_INPUT');
    expect(invalid.message).toContain('task');
  });

  it('knows no flow it does not have', async () => {
    expect(await orchestrator.get('reentrant-nosuchflow-00000000')).toBeUndefined();
    expect(await orchestrator.get('not a flow id!')).toBeUndefined();
    expect((await refusal(orchestrator.done('reentrant-nosuchflow-00000000'))).code).toBe('FLOW_NOT_FOUND');
    expect((await refusal(orchestrator.cancel('reentrant-nosuchflow-00000000'))).code).toBe('FLOW_NOT_FOUND');
    expect((await refusal(orchestrator.send('reentrant-nosuchflow-00000000', { type: 'review', data: { approved: true } }))).code).toBe('FLOW_NOT_FOUND');
    expect((await refusal(collect(orchestrator.events('reentrant-nosuchflow-00000000')))).code).toBe('FLOW_NOT_FOUND');
  });

  it('cancels a flow that waits for a person: it ends cancelled, and a second cancel is refused', async () => {
    const flowId = await orchestrator.start('reentrant', personReview);
    expect(await waitingFor(orchestrator, flowId)).toMatchObject({ status: 'running', state: 'awaitingReview', waiting: [{ events: ['review'] }] });
    await orchestrator.cancel(flowId);
    expect(await orchestrator.done(flowId)).toMatchObject({ flowId, status: 'cancelled', error: { code: 'CANCELLED' } });
    expect((await refusal(orchestrator.cancel(flowId))).code).toBe('FLOW_FINISHED');
    expect((await refusal(orchestrator.send(flowId, { type: 'review', data: { approved: true } }))).code).toBe('FLOW_FINISHED');
  });

  it('sends the approval a flow waits for (refusing what it does not wait for); events give its steps in seq order and end with its end', async () => {
    const flowId = await orchestrator.start('reentrant', personReview);
    const events = collect(orchestrator.events(flowId));
    await waitingFor(orchestrator, flowId);
    expect((await refusal(orchestrator.send(flowId, { type: 'score', data: { score: 1 } }))).code).toBe('EVENT_NOT_ACCEPTED');
    expect((await refusal(orchestrator.send(flowId, { type: 'review', data: { approved: 'yes' } }))).code).toBe('INVALID_EVENT');
    expect(await orchestrator.send(flowId, { type: 'review', data: { approved: true }, eventId: `yes-${mode.replace(' ', '-')}` })).toEqual({ eventId: `yes-${mode.replace(' ', '-')}`, duplicate: false });
    const done = await orchestrator.done(flowId);
    expect(done).toMatchObject({ flowId, status: 'done', output: { status: 'done', approved: true } });
    const seen = await events;
    expect(seen.map((e) => e.seq)).toEqual(seen.map((_, i) => i + 1));
    expect(seen.length).toBeGreaterThan(2);
    expect(seen.slice(0, -1).every((e) => e.status === 'running' && e.flowId === flowId)).toBe(true);
    expect(seen.at(-1)).toMatchObject({ flowId, status: 'done' });
    expect(seen.map((e) => e.state)).toContain('awaitingReview');
    // A reader who comes after the end still reads to it.
    expect((await collect(orchestrator.events(flowId))).at(-1)).toMatchObject({ status: 'done' });
  });
});

describe('the orchestrator, embedded only', () => {
  it('closes, and a new one on the same state directory resumes the unfinished flows: one in mid-call, one that waits', async () => {
    const stateDir = await mkdtemp(join(tmpdir(), 'orch-resume-'));
    const first = await createOrchestrator({ stateDir, env });
    const waiting = await first.start('reentrant', personReview);
    await waitingFor(first, waiting);
    const before = model.requests.length;
    const inFlight = await first.start('microtask', { ...microtask, data: { text: 'SLOW: a text that takes its time.' } });
    for (let i = 0; i < 200 && !model.requests.slice(before).some((r) => r.lastUserText.includes('SLOW')); i++) await new Promise((r) => setTimeout(r, 20));
    expect(model.requests.slice(before).some((r) => r.lastUserText.includes('SLOW'))).toBe(true);
    await first.close();
    expect((await refusal(first.get(inFlight))).code).toBe('CLOSED');

    const second = await createOrchestrator({ stateDir, env });
    try {
      expect(await second.get(waiting)).toMatchObject({ status: 'running', waiting: [{ events: ['review'] }] });
      // The resumed flow's events start where it stood (its last step announced again), and go on to its end.
      const events = collect(second.events(waiting));
      await second.send(waiting, { type: 'review', data: { approved: true } });
      expect(await second.done(waiting)).toMatchObject({ status: 'done', output: { approved: true } });
      const seen = await events;
      expect(seen.at(-1)).toMatchObject({ status: 'done' });
      expect(seen.map((e) => e.seq)).toEqual(seen.map((_, i) => seen[0]!.seq + i));
      // Its call was cut when the first closed; made again here, it answers.
      expect(await second.done(inFlight)).toMatchObject({ status: 'done', output: { status: 'done' } });
      expect(model.requests.filter((r) => r.lastUserText.includes('SLOW')).length).toBe(2);
    } finally {
      await second.close();
    }
  });

  it("calls the program's model when given one (no request to the API), and refuses a bad flow definition at creation", async () => {
    const scripted = new ScriptedModel(['Summarized by the program.']);
    const before = model.requests.length;
    const orchestrator = await createOrchestrator({ stateDir: await mkdtemp(join(tmpdir(), 'orch-model-')), env, model: scripted });
    try {
      const flowId = await orchestrator.start('microtask', microtask);
      expect(await orchestrator.done(flowId)).toMatchObject({ status: 'done', output: { status: 'done', result: 'Summarized by the program.' } });
      expect(scripted.calls).toHaveLength(1);
      expect(model.requests.length).toBe(before);
    } finally {
      await orchestrator.close();
    }
    const bad = await refusal(createOrchestrator({ stateDir: await mkdtemp(join(tmpdir(), 'orch-bad-')), env, flows: [{ ...shout, name: 'microtask' }] }));
    expect(bad.code).toBe('INVALID_FLOW_DEFINITION');
  });

  it("runs the program's own tasks, given with its flows as a module", async () => {
    const runs: string[] = [];
    const orchestrator = await createOrchestrator({ stateDir: await mkdtemp(join(tmpdir(), 'orch-tasks-')), env, flows: { flows: [enrichFlow], tasks: countingTasks(runs) } });
    try {
      const flowId = await orchestrator.start('enrich', { text: '  Hello ' });
      const done = await orchestrator.done(flowId);
      expect(done).toMatchObject({ status: 'done', output: { result: { normalized: { success: true, result: 'hello' }, score: { success: true, result: { length: 5 } } } } });
      expect(runs).toHaveLength(2);
    } finally {
      await orchestrator.close();
    }
  });

  it('refuses options that name no mode, or both', async () => {
    expect((await refusal(createOrchestrator({} as never))).code).toBe('INVALID_OPTIONS');
    expect((await refusal(createOrchestrator({ stateDir: '/tmp/x', natsUrl: 'nats://127.0.0.1:4222' } as never))).code).toBe('INVALID_OPTIONS');
  });
});

describe('the orchestrator over NATS, only', () => {
  it('says NO_DAEMON when no daemon serves its prefix', async () => {
    const orchestrator = await createOrchestrator({ natsUrl: nats.url, subjectPrefix: 'nobody', timeoutMs: 2_000 });
    try {
      const refused = await refusal(orchestrator.start('microtask', microtask));
      expect(refused.code).toBe('NO_DAEMON');
      expect(refused.message).toContain('microtask daemon');
    } finally {
      await orchestrator.close();
    }
  });
});
