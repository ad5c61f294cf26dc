import { context, propagation, ROOT_CONTEXT, SpanKind, SpanStatusCode, trace, type Context, type Span } from '@opentelemetry/api';
import type { SpanExporter } from '@opentelemetry/sdk-trace-base';
import { flowIdOf, type MicrotaskInput, type MicrotaskResult } from '../contracts/microtask.js';
import type { Journal, JournalEntry } from '../journal/Journal.js';
import { teeJournal } from '../journal/tee.js';

/**
 * Traces with OpenTelemetry. The code calls @opentelemetry/api only: without a tracer
 * provider its spans are the API's no-ops. `startTracing`, at the process's entry, installs
 * the SDK when an OTEL_* variable asks for traces (OTEL_TRACES_EXPORTER, or an OTLP endpoint),
 * and loads nothing otherwise.
 *
 * Spans: `flow <pattern>` from a flow's start (or resume in this process) to its end;
 * `microtask <taskType>` on the daemon (enqueue to result) and on the worker or embedded
 * runner (lookup, model call, store), the worker's a child of the daemon's through the
 * job's `traceparent` header; `chat <model>` per model call with the GenAI semantic
 * conventions (the Anthropic SDK adds its own HTTP call span under it). Prompts and answers
 * go into spans only with MICROTASK_TRACE_CONTENT=true.
 */

const SCOPE = 'microtask-orchestrator';
const tracer = () => trace.getTracer(SCOPE);

/** Set by startTracing: without it no flow is followed (the spans would be no-ops anyway). */
let enabled = false;
/** MICROTASK_TRACE_CONTENT: prompts and answers as span attributes. */
let withContent = false;

export interface Tracing {
  /** Ends the flow spans still open (flows this process leaves running) and exports what is buffered. */
  shutdown(): Promise<void>;
}

/** Whether the environment asks for traces: OTEL_TRACES_EXPORTER other than `none`, or an OTLP endpoint; never with OTEL_SDK_DISABLED=true. */
export function tracesRequested(env: NodeJS.ProcessEnv): boolean {
  if (env.OTEL_SDK_DISABLED?.trim().toLowerCase() === 'true') return false;
  const exporters = env.OTEL_TRACES_EXPORTER?.trim();
  if (exporters) return exporters.split(',').some((e) => e.trim() !== 'none' && e.trim() !== '');
  return Boolean(env.OTEL_EXPORTER_OTLP_ENDPOINT?.trim() || env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT?.trim());
}

export interface StartTracingOptions {
  env?: NodeJS.ProcessEnv;
  /** service.name when OTEL_SERVICE_NAME does not give one. */
  serviceName?: string;
  /** Spans go here (each at once) instead of where the environment says: tests' in-memory exporter. */
  exporter?: SpanExporter;
}

/**
 * Installs the OpenTelemetry SDK as the global tracer provider when the environment asks
 * for traces (or an exporter is given); otherwise loads nothing and returns undefined.
 * Exporters (OTEL_TRACES_EXPORTER, default `otlp`): `otlp` (OTLP over HTTP, to
 * OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, default
 * localhost:4318), `console`. Sampling, batching and resource come from the standard
 * OTEL_TRACES_SAMPLER, OTEL_BSP_* and OTEL_RESOURCE_ATTRIBUTES variables.
 */
export async function startTracing(options: StartTracingOptions = {}): Promise<Tracing | undefined> {
  const env = options.env ?? process.env;
  if (!options.exporter && !tracesRequested(env)) return undefined;
  const [{ NodeTracerProvider }, base, resources] = await Promise.all([
    import('@opentelemetry/sdk-trace-node'),
    import('@opentelemetry/sdk-trace-base'),
    import('@opentelemetry/resources'),
  ]);
  const processors = [];
  if (options.exporter) processors.push(new base.SimpleSpanProcessor(options.exporter));
  else {
    const names = (env.OTEL_TRACES_EXPORTER?.trim() || 'otlp').split(',').map((n) => n.trim());
    for (const name of names) {
      if (name === 'console') processors.push(new base.BatchSpanProcessor(new base.ConsoleSpanExporter()));
      else if (name === 'otlp') {
        const { OTLPTraceExporter } = await import('@opentelemetry/exporter-trace-otlp-http');
        processors.push(new base.BatchSpanProcessor(new OTLPTraceExporter()));
      } else if (name !== 'none' && name !== '') {
        process.emitWarning(`OTEL_TRACES_EXPORTER=${name} is not supported here (use otlp or console): no traces go there`);
      }
    }
  }
  const detected = resources.detectResources({ detectors: [resources.envDetector] });
  const named = (env.OTEL_SERVICE_NAME?.trim() || detected.attributes['service.name']) ? {} : { 'service.name': options.serviceName ?? 'microtask' };
  const provider = new NodeTracerProvider({
    resource: resources.defaultResource().merge(resources.resourceFromAttributes(named)).merge(detected),
    spanProcessors: processors,
  });
  // The global provider, the AsyncLocalStorage context (a span is current across awaits) and the W3C propagator.
  provider.register();
  enabled = true;
  withContent = ['1', 'true', 'yes'].includes((env.MICROTASK_TRACE_CONTENT ?? '').trim().toLowerCase());
  return {
    shutdown: async () => {
      for (const [flowId, span] of flowSpans) {
        span.setAttribute('microtask.flow.left_running', true);
        span.end();
        flowSpans.delete(flowId);
      }
      enabled = false;
      await provider.shutdown().catch(() => undefined);
      trace.disable();
      context.disable();
      propagation.disable();
    },
  };
}

// -- flows ---------------------------------------------------------------------------

/** The open flow span of each flow this process runs, by flow id. */
const flowSpans = new Map<string, Span>();

/**
 * The journal, also opening a `flow <pattern>` span when a flow starts or resumes and
 * ending it when the flow ends (FlowHost journals both before and after anything else
 * of the flow). The journal as it is when traces are off.
 */
export function withFlowSpans(journal: Journal): Journal {
  if (!enabled) return journal;
  return teeJournal(journal, (entry) => followFlow(entry));
}

function followFlow(entry: JournalEntry): void {
  if (entry.kind !== 'flow') return;
  const open = flowSpans.get(entry.flowId);
  if (entry.phase === 'ended') {
    if (!open) return;
    open.setAttribute('microtask.flow.status', entry.status);
    if (entry.status === 'failed') {
      open.setAttribute('error.type', entry.error?.code ?? 'failed');
      open.setStatus({ code: SpanStatusCode.ERROR, ...(entry.error ? { message: entry.error.message } : {}) });
    }
    open.end();
    flowSpans.delete(entry.flowId);
    return;
  }
  open?.end();
  const span = tracer().startSpan(
    `flow ${entry.pattern}`,
    { kind: SpanKind.INTERNAL, attributes: { 'microtask.flow.id': entry.flowId, 'microtask.flow.pattern': entry.pattern, 'microtask.flow.phase': entry.phase } },
    ROOT_CONTEXT,
  );
  flowSpans.set(entry.flowId, span);
}

/**
 * The context a microtask's span starts in: the remote span a worker's job carried, else
 * its flow's span in this process, else the current one. The flow's span before the current
 * one: a flow's next microtask starts in whatever context the last one's result came back in.
 */
function parentOf(key: string): Context {
  const active = context.active();
  if (trace.getSpan(active)?.spanContext().isRemote) return active;
  const flow = flowSpans.get(flowIdOf(key));
  return flow ? trace.setSpan(active, flow) : active;
}

// -- microtasks ------------------------------------------------------------------------

const microtaskAttributes = (input: MicrotaskInput) => ({
  'microtask.task_type': input.taskType,
  'microtask.key': input.key,
  'microtask.flow.id': flowIdOf(input.key),
});

function endMicrotask(span: Span, result: MicrotaskResult): void {
  span.setAttribute('microtask.success', result.success);
  span.setAttribute('microtask.cached', result.cached);
  if (!result.success) {
    span.setAttribute('error.type', result.error?.kind ?? 'unknown');
    span.setStatus({ code: SpanStatusCode.ERROR, ...(result.error ? { message: result.error.message } : {}) });
  }
  span.end();
}

function failMicrotask(span: Span, e: unknown): never {
  span.recordException(e instanceof Error ? e : String(e));
  span.setAttribute('error.type', (e as { code?: unknown }).code && typeof (e as { code?: unknown }).code === 'string' ? (e as { code: string }).code : 'internal');
  span.setStatus({ code: SpanStatusCode.ERROR, message: e instanceof Error ? e.message : String(e) });
  span.end();
  throw e;
}

/**
 * Runs a microtask (`run`) in its span, `microtask <taskType>`: a child of the current span
 * (the daemon's, on a worker) or of its flow's. `kind` says which side: the daemon sends it
 * to a worker (PRODUCER), a worker or the embedded runner does the work (INTERNAL).
 */
export function traceMicrotask(input: MicrotaskInput, kind: 'send' | 'run', run: () => Promise<MicrotaskResult>): Promise<MicrotaskResult> {
  if (!enabled) return run();
  const parent = parentOf(input.key);
  const span = tracer().startSpan(
    `microtask ${String(input.taskType)}`,
    { kind: kind === 'send' ? SpanKind.PRODUCER : SpanKind.INTERNAL, attributes: microtaskAttributes(input) },
    parent,
  );
  return context.with(trace.setSpan(parent, span), run).then(
    (result) => (endMicrotask(span, result), result),
    (e: unknown) => failMicrotask(span, e),
  );
}

/** The current trace context as message headers (`traceparent`, `tracestate`); undefined when there is none. */
export function traceHeaders(): Record<string, string> | undefined {
  if (!enabled) return undefined;
  const headers: Record<string, string> = {};
  propagation.inject(context.active(), headers);
  return Object.keys(headers).length ? headers : undefined;
}

/** Runs `fn` in the trace context that `headers` carry (a job's), or as it is without one. */
export function withTraceHeaders<T>(headers: Record<string, string> | undefined, fn: () => T): T {
  if (!enabled || !headers) return fn();
  return context.with(propagation.extract(context.active(), headers), fn);
}

// -- model calls -------------------------------------------------------------------------

export interface ModelCallInfo {
  model: string;
  maxTokens: number;
  system: string;
  prompt: string;
  data?: unknown;
}

interface ModelAnswer {
  model: string;
  text: string;
  stopReason: string;
  usage: { inputTokens: number; outputTokens: number; cacheReadInputTokens?: number; cacheCreationInputTokens?: number };
}

/**
 * Runs a model call in its span, `chat <model>`, with the GenAI semantic conventions:
 * gen_ai.system, gen_ai.operation.name, gen_ai.request.*, gen_ai.response.*,
 * gen_ai.usage.* and error.type (the ModelError's kind). The prompt and the answer only
 * with MICROTASK_TRACE_CONTENT=true.
 */
export function traceModelCall<R extends ModelAnswer>(info: ModelCallInfo, call: () => Promise<R>): Promise<R> {
  if (!enabled) return call();
  const span = tracer().startSpan(`chat ${info.model}`, {
    kind: SpanKind.CLIENT,
    attributes: {
      'gen_ai.system': 'anthropic',
      'gen_ai.provider.name': 'anthropic',
      'gen_ai.operation.name': 'chat',
      'gen_ai.request.model': info.model,
      'gen_ai.request.max_tokens': info.maxTokens,
      ...(withContent
        ? {
            'gen_ai.system_instructions': JSON.stringify([{ type: 'text', content: info.system }]),
            'gen_ai.input.messages': JSON.stringify([
              { role: 'user', parts: [{ type: 'text', content: info.prompt }, ...(info.data === undefined ? [] : [{ type: 'text', content: JSON.stringify(info.data) }])] },
            ]),
          }
        : {}),
    },
  });
  const usage = (u: ModelAnswer['usage'] | undefined) => {
    if (!u) return;
    span.setAttribute('gen_ai.usage.input_tokens', u.inputTokens);
    span.setAttribute('gen_ai.usage.output_tokens', u.outputTokens);
    if (u.cacheReadInputTokens) span.setAttribute('gen_ai.usage.cache_read.input_tokens', u.cacheReadInputTokens);
    if (u.cacheCreationInputTokens) span.setAttribute('gen_ai.usage.cache_creation.input_tokens', u.cacheCreationInputTokens);
  };
  return context.with(trace.setSpan(context.active(), span), call).then(
    (answer) => {
      span.setAttribute('gen_ai.response.model', answer.model);
      span.setAttribute('gen_ai.response.finish_reasons', [answer.stopReason]);
      usage(answer.usage);
      if (withContent) span.setAttribute('gen_ai.output.messages', JSON.stringify([{ role: 'assistant', parts: [{ type: 'text', content: answer.text }], finish_reason: answer.stopReason }]));
      span.end();
      return answer;
    },
    (e: unknown) => {
      const error = e as { kind?: unknown; usage?: ModelAnswer['usage']; message?: unknown };
      span.setAttribute('error.type', typeof error.kind === 'string' ? error.kind : '_OTHER');
      usage(error.usage);
      span.setStatus({ code: SpanStatusCode.ERROR, ...(typeof error.message === 'string' ? { message: error.message } : {}) });
      span.end();
      throw e;
    },
  );
}
