import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, type IncomingMessage } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { InMemorySpanExporter, type ReadableSpan } from '@opentelemetry/sdk-trace-base';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AnthropicModel } from '../src/actors/model/AnthropicModel.js';
import { connectNatsBus } from '../src/bus/NatsBus.js';
import { loadConfig } from '../src/config.js';
import { silentLogger } from '../src/log.js';
import { startTracing, tracesRequested, type Tracing } from '../src/ops/tracing.js';
import { runFlow } from '../src/runFlow.js';
import { createRuntime } from '../src/runtime.js';
import { startDaemonService } from '../src/services.js';
import { reply, startFakeAnthropic } from '../src/testing/fakeAnthropic.js';
import { freePort, startNatsServer } from '../src/testing/natsServer.js';

// Issue 15, item 5: traces across a real nats-server, a daemon (this process, its spans in
// an in-memory exporter) and a worker (`microtask worker`, another process, switched on by
// OTEL_EXPORTER_OTLP_ENDPOINT, exporting OTLP/HTTP to a receiver here; with its metrics on,
// which wrap the jobs it takes). The model is the real SDK against the fake Anthropic server.

const ROOT = new URL('..', import.meta.url).pathname;
const PROMPT = 'Summarize the secret plan in one line.';
const ANSWER = 'the plan, in one line';

interface Span {
  traceId: string;
  spanId: string;
  parentSpanId: string | undefined;
  name: string;
  attributes: Record<string, unknown>;
  service: string;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
async function until<T>(check: () => T | undefined | false, what: string, timeoutMs = 30_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = check();
    if (value !== undefined && value !== false) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

const fromMemory = (s: ReadableSpan): Span => ({
  traceId: s.spanContext().traceId,
  spanId: s.spanContext().spanId,
  parentSpanId: s.parentSpanContext?.spanId,
  name: s.name,
  attributes: { ...s.attributes },
  service: String(s.resource.attributes['service.name']),
});

/** OTLP/JSON ids are hex (or base64 by some encoders): hex either way. */
const hex = (id: string | undefined) => (!id ? undefined : /^[0-9a-f]+$/i.test(id) ? id.toLowerCase() : Buffer.from(id, 'base64').toString('hex'));
type OtlpValue = { stringValue?: string; intValue?: string | number; boolValue?: boolean; doubleValue?: number; arrayValue?: { values: OtlpValue[] } };
const valueOf = (v: OtlpValue): unknown =>
  v.stringValue ?? (v.intValue !== undefined ? Number(v.intValue) : undefined) ?? v.boolValue ?? v.doubleValue ?? v.arrayValue?.values.map(valueOf);

/** A receiver of OTLP/HTTP JSON traces (what a collector listens on, port 4318). */
async function startOtlpReceiver() {
  const spans: Span[] = [];
  const read = async (req: IncomingMessage) => {
    let body = '';
    for await (const chunk of req) body += chunk;
    return body;
  };
  const server = createServer((req, res) => {
    void read(req).then((body) => {
      if (req.url === '/v1/traces') {
        const payload = JSON.parse(body) as {
          resourceSpans: {
            resource: { attributes: { key: string; value: OtlpValue }[] };
            scopeSpans: { spans: { traceId: string; spanId: string; parentSpanId?: string; name: string; attributes?: { key: string; value: OtlpValue }[] }[] }[];
          }[];
        };
        for (const rs of payload.resourceSpans) {
          const service = String(valueOf(rs.resource.attributes.find((a) => a.key === 'service.name')!.value));
          for (const ss of rs.scopeSpans) {
            for (const s of ss.spans) {
              spans.push({
                traceId: hex(s.traceId)!,
                spanId: hex(s.spanId)!,
                parentSpanId: hex(s.parentSpanId),
                name: s.name,
                attributes: Object.fromEntries((s.attributes ?? []).map((a) => [a.key, valueOf(a.value)])),
                service,
              });
            }
          }
        }
      }
      res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
    });
  });
  const port = await freePort();
  await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve));
  return { url: `http://127.0.0.1:${port}`, spans, close: () => new Promise<void>((resolve) => server.close(() => resolve())) };
}

let memory: InMemorySpanExporter;
let tracing: Tracing | undefined;
beforeAll(async () => {
  memory = new InMemorySpanExporter();
  tracing = await startTracing({ exporter: memory, serviceName: 'microtask-daemon', env: {} });
});
afterAll(async () => {
  await tracing?.shutdown();
});

describe('traces (issue 15)', () => {
  it('switched on by the OTEL_* variables only', () => {
    expect(tracesRequested({})).toBe(false);
    expect(tracesRequested({ OTEL_TRACES_EXPORTER: 'none' })).toBe(false);
    expect(tracesRequested({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://collector:4318' })).toBe(true);
    expect(tracesRequested({ OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'http://collector:4318/v1/traces' })).toBe(true);
    expect(tracesRequested({ OTEL_TRACES_EXPORTER: 'console' })).toBe(true);
    expect(tracesRequested({ OTEL_TRACES_EXPORTER: 'otlp', OTEL_SDK_DISABLED: 'true' })).toBe(false);
  });

  it("a flow on the daemon, its microtask sent over NATS, and the worker's microtask and model call: one trace, each span the child of the one before", async () => {
    await using nats = await startNatsServer();
    await using model = await startFakeAnthropic({ replies: () => reply.text(ANSWER, { usage: { input_tokens: 11, output_tokens: 7 } }) });
    const receiver = await startOtlpReceiver();
    const stateDir = await mkdtemp(join(tmpdir(), 'tracing-'));
    const worker = spawn(process.execPath, ['--import', 'tsx', join(ROOT, 'src/cli.ts'), 'worker', '--http-port', '0'], {
      cwd: ROOT,
      env: {
        PATH: process.env.PATH ?? '',
        NATS_URL: nats.url,
        ANTHROPIC_API_KEY: 'sk-test',
        ANTHROPIC_BASE_URL: model.url,
        MICROTASK_MODEL: 'claude-test-model',
        MICROTASK_STATE_DIR: stateDir,
        MICROTASK_LOG_LEVEL: 'warn',
        OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url,
        OTEL_BSP_SCHEDULE_DELAY: '50',
      },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let workerLog = '';
    worker.stderr!.on('data', (d) => (workerLog += d));
    const exited = new Promise<number | null>((resolve) => worker.on('exit', (code) => resolve(code)));
    const config = loadConfig({ NATS_URL: nats.url, MICROTASK_STATE_DIR: stateDir });
    const bus = await connectNatsBus({ servers: [nats.url] });
    const daemon = await startDaemonService(bus, config, silentLogger);
    try {
      memory.reset();
      const started = (await bus.request('microtask.flow.start.microtask', JSON.stringify({ input: { taskType: 'summarize', system: 'You summarize.', prompt: PROMPT } }), { timeoutMs: 10_000 })).json<{
        ok: boolean;
        flowId: string;
      }>();
      expect(started.ok).toBe(true);
      const flowId = started.flowId;
      const ours = () => memory.getFinishedSpans().map(fromMemory);
      // The flow's span ends when its end is journaled, the worker's once its batch is exported.
      const flow = await until(() => ours().find((s) => s.name === 'flow microtask' && s.attributes['microtask.flow.id'] === flowId), `the flow span (worker log: ${workerLog})`);
      const chat = await until(() => receiver.spans.find((s) => s.name.startsWith('chat ')), `the worker's model span (worker log: ${workerLog})`);

      expect(flow).toMatchObject({ parentSpanId: undefined, service: 'microtask-daemon', attributes: { 'microtask.flow.pattern': 'microtask', 'microtask.flow.status': 'done' } });
      const sent = ours().find((s) => s.name === 'microtask summarize')!;
      expect(sent).toMatchObject({ traceId: flow.traceId, parentSpanId: flow.spanId, attributes: { 'microtask.task_type': 'summarize', 'microtask.success': true } });
      const ran = receiver.spans.find((s) => s.name === 'microtask summarize')!;
      expect(ran).toMatchObject({ traceId: flow.traceId, parentSpanId: sent.spanId, service: 'microtask-worker', attributes: { 'microtask.success': true, 'microtask.cached': false } });
      expect(chat).toMatchObject({
        name: 'chat claude-test-model',
        traceId: flow.traceId,
        parentSpanId: ran.spanId,
        attributes: {
          'gen_ai.system': 'anthropic',
          'gen_ai.operation.name': 'chat',
          'gen_ai.request.model': 'claude-test-model',
          'gen_ai.response.model': 'claude-test-model',
          'gen_ai.usage.input_tokens': 11,
          'gen_ai.usage.output_tokens': 7,
        },
      });
      expect(chat.attributes['error.type']).toBeUndefined();
      // The SDK's own HTTP call span, if any, sits under the model call, in the same trace.
      for (const s of receiver.spans) expect(s.traceId).toBe(flow.traceId);
      // Prompts and answers stay out of spans unless MICROTASK_TRACE_CONTENT says otherwise.
      const everything = JSON.stringify([...ours(), ...receiver.spans]);
      expect(everything).not.toContain(PROMPT);
      expect(everything).not.toContain(ANSWER);
    } finally {
      worker.kill('SIGTERM');
      expect(await exited).toBe(0);
      await daemon.stop();
      await bus.close();
      await receiver.close();
      await rm(stateDir, { recursive: true, force: true });
    }
  }, 90_000);

  it('embedded (`microtask run`): the flow, its microtask run in the process and the model call, one trace', async () => {
    await using model = await startFakeAnthropic({ replies: () => reply.text(ANSWER, { usage: { input_tokens: 3, output_tokens: 2 } }) });
    const stateDir = await mkdtemp(join(tmpdir(), 'tracing-embedded-'));
    const config = loadConfig({ MICROTASK_STATE_DIR: stateDir, ANTHROPIC_API_KEY: 'sk-test', ANTHROPIC_BASE_URL: model.url, MICROTASK_MODEL: 'claude-test-model' });
    // What `microtask run` builds: the state directory's stores, the model, the runner, one flow hosted here.
    const runtime = await createRuntime(config, silentLogger);
    try {
      memory.reset();
      const { flowId, record } = await runFlow(runtime, 'microtask', { taskType: 'summarize', system: 's', prompt: PROMPT });
      expect(record.status).toBe('done');
      const ours = () => memory.getFinishedSpans().map(fromMemory);
      // The flow's span ends when its end is journaled.
      const flow = await until(() => ours().find((s) => s.name === 'flow microtask' && s.attributes['microtask.flow.id'] === flowId), 'the flow span');
      const ran = ours().find((s) => s.name === 'microtask summarize')!;
      const chat = ours().find((s) => s.name === 'chat claude-test-model')!;
      expect(flow).toMatchObject({ parentSpanId: undefined, attributes: { 'microtask.flow.pattern': 'microtask', 'microtask.flow.status': 'done' } });
      expect(ran).toMatchObject({ traceId: flow.traceId, parentSpanId: flow.spanId, attributes: { 'microtask.success': true } });
      expect(chat).toMatchObject({ traceId: flow.traceId, parentSpanId: ran.spanId, attributes: { 'gen_ai.usage.input_tokens': 3, 'gen_ai.usage.output_tokens': 2 } });
    } finally {
      await runtime.close();
      await rm(stateDir, { recursive: true, force: true });
    }
  }, 60_000);

  it('a model call that fails: error.type is its kind, its tokens are none', async () => {
    await using model = await startFakeAnthropic({ replies: () => reply.overloaded() });
    const anthropic = new AnthropicModel({ apiKey: 'k', baseURL: model.url, model: 'claude-test-model', maxRetries: 0 });
    memory.reset();
    await expect(anthropic.call({ system: 's', prompt: PROMPT })).rejects.toMatchObject({ kind: 'unavailable', status: 529 });
    const chat = memory.getFinishedSpans().map(fromMemory).find((s) => s.name === 'chat claude-test-model')!;
    expect(chat.attributes).toMatchObject({ 'gen_ai.system': 'anthropic', 'gen_ai.request.model': 'claude-test-model', 'error.type': 'unavailable' });
    expect(chat.attributes['gen_ai.usage.input_tokens']).toBeUndefined();
  });

  it('with MICROTASK_TRACE_CONTENT=true, the prompt and the answer are in the model span', async () => {
    // Again, with the variable (a shut-down exporter takes no more spans: a new one).
    await tracing?.shutdown();
    memory = new InMemorySpanExporter();
    tracing = await startTracing({ exporter: memory, env: { MICROTASK_TRACE_CONTENT: 'true' } });
    await using model = await startFakeAnthropic({ replies: () => reply.text(ANSWER) });
    const anthropic = new AnthropicModel({ apiKey: 'k', baseURL: model.url, model: 'claude-test-model', maxRetries: 0 });
    memory.reset();
    await anthropic.call({ system: 'You summarize.', prompt: PROMPT });
    const chat = memory.getFinishedSpans().map(fromMemory).find((s) => s.name === 'chat claude-test-model')!;
    expect(JSON.parse(String(chat.attributes['gen_ai.input.messages']))).toEqual([{ role: 'user', parts: [{ type: 'text', content: PROMPT }] }]);
    expect(String(chat.attributes['gen_ai.output.messages'])).toContain(ANSWER);
    expect(String(chat.attributes['gen_ai.system_instructions'])).toContain('You summarize.');
  });
});
