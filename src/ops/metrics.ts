import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { ModelPort, ModelRequest, ModelResponse } from '../actors/model/ModelPort.js';
import type { Job, WorkQueue } from '../bus/Bus.js';
import type { JournalEntry } from '../journal/Journal.js';

/** How long a scrape waits for the queue's depth before it reports the last one it had. */
const DEPTH_TIMEOUT_MS = 2_000;

/**
 * The process's metrics in the Prometheus text format (`/metrics`), each collected where
 * its event already is, never by a second bookkeeping of the flows:
 *
 * - flows, transitions, saves, microtasks as flows see them, budget stops: from the
 *   daemon's journal (`observe`, given every entry as FlowHost appends it);
 * - model calls (latency, tokens): from the model port the runner calls (`meterModel`),
 *   on the worker with NATS and in the daemon embedded, so each call counts once;
 * - deliveries, redeliveries, retries, dead letters: from the jobs a worker takes (`meterQueue`);
 * - queue depth: read from the queue when scraped (`watchQueue`);
 * - flows asleep: read from the daemon when scraped (`watchFlowsAsleep`).
 *
 * One registry per instance (not prom-client's global one), so that a daemon and a worker
 * in one process share one, and tests make as many as they like.
 */
export class Metrics {
  readonly registry = new Registry();
  /** flowId → pattern, for the flows this process runs: journal entries other than `flow` do not name it. */
  private readonly patternOf = new Map<string, string>();
  private readonly flowsStarted: Counter<'pattern'>;
  private readonly flowsResumed: Counter<'pattern'>;
  private readonly flowsEnded: Counter<'pattern' | 'status' | 'outcome'>;
  private readonly budgetStops: Counter<'pattern'>;
  private readonly transitions: Counter<'pattern'>;
  private readonly saves: Counter<'pattern'>;
  private readonly microtasks: Counter<'task_type' | 'outcome' | 'error_kind'>;
  private readonly modelCalls: Histogram<'model' | 'outcome'>;
  private readonly tokens: Counter<'model' | 'kind'>;
  private readonly deliveries: Counter<'queue'>;
  private readonly redeliveries: Counter<'queue'>;
  private readonly retries: Counter<'queue'>;
  private readonly deadLetters: Counter<'queue'>;
  private readonly acked: Counter<'queue'>;
  private readonly queues = new Map<string, { queue: WorkQueue; last: { waiting: number; inFlight: number } }>();
  /** What holds flows asleep (a daemon), asked how many on each scrape. */
  private readonly sleepers = new Set<FlowsAsleep>();

  constructor(options: { processMetrics?: boolean } = {}) {
    const registers = [this.registry];
    if (options.processMetrics ?? true) collectDefaultMetrics({ register: this.registry });
    this.flowsStarted = new Counter({ name: 'microtask_flows_started_total', help: 'Flows started by this daemon, by pattern.', labelNames: ['pattern'], registers });
    this.flowsResumed = new Counter({
      name: 'microtask_flows_resumed_total',
      help: 'Flows resumed by this daemon (at its start, or taken over from a daemon that stopped renewing its leases), by pattern.',
      labelNames: ['pattern'],
      registers,
    });
    this.flowsEnded = new Counter({
      name: 'microtask_flows_ended_total',
      help: "Flows ended on this daemon, by pattern, status (done, failed, cancelled) and the pattern's outcome (done, exhausted, budget_exceeded, failed; empty without an output).",
      labelNames: ['pattern', 'status', 'outcome'],
      registers,
    });
    this.budgetStops = new Counter({ name: 'microtask_budget_stops_total', help: 'Flows that ended because their budget (tokens or calls) ran out, by pattern.', labelNames: ['pattern'], registers });
    this.transitions = new Counter({ name: 'microtask_flow_transitions_total', help: 'Transitions taken by the machines of the flows on this daemon (children included), by pattern.', labelNames: ['pattern'], registers });
    this.saves = new Counter({ name: 'microtask_flow_saves_total', help: 'Snapshots saved (steps) by the flows on this daemon, by pattern.', labelNames: ['pattern'], registers });
    this.microtasks = new Counter({
      name: 'microtask_microtasks_total',
      help: 'Microtasks finished as their flows saw them, by task type, outcome (ok, cached, fallback, failed) and error kind (empty when ok).',
      labelNames: ['task_type', 'outcome', 'error_kind'],
      registers,
    });
    this.modelCalls = new Histogram({
      name: 'microtask_model_call_duration_seconds',
      help: 'Model calls made by this process, by model and outcome (ok, or the error kind), in seconds.',
      labelNames: ['model', 'outcome'],
      buckets: [0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120],
      registers,
    });
    this.tokens = new Counter({
      name: 'microtask_model_tokens_total',
      help: 'Tokens of the model calls made by this process, by model and kind (input, output, cache_creation, cache_read).',
      labelNames: ['model', 'kind'],
      registers,
    });
    this.deliveries = new Counter({ name: 'microtask_task_deliveries_total', help: 'Tasks taken off the work queue by this worker (each delivery).', labelNames: ['queue'], registers });
    this.redeliveries = new Counter({
      name: 'microtask_task_redeliveries_total',
      help: 'Deliveries after the first: a retry after a transient failure, or a task whose worker went quiet past the ack wait.',
      labelNames: ['queue'],
      registers,
    });
    this.retries = new Counter({ name: 'microtask_task_retries_total', help: 'Tasks this worker put back for a later delivery (transient failure, store down, shutdown).', labelNames: ['queue'], registers });
    this.deadLetters = new Counter({ name: 'microtask_dead_letters_total', help: 'Tasks this worker gave up on and published to the dead letters.', labelNames: ['queue'], registers });
    this.acked = new Counter({ name: 'microtask_tasks_acked_total', help: 'Tasks this worker finished and acked.', labelNames: ['queue'], registers });
    const queues = this.queues;
    new Gauge({
      name: 'microtask_queue_depth',
      help: 'Tasks in the work queue: waiting to be taken, or in flight on a worker (the same value from every process that reads it: aggregate with max).',
      labelNames: ['queue', 'state'],
      registers,
      async collect() {
        this.reset();
        await Promise.all(
          [...queues.values()].map(async (watched) => {
            watched.last = await withTimeout(watched.queue.depth(), DEPTH_TIMEOUT_MS).catch(() => watched.last);
            this.set({ queue: watched.queue.name, state: 'waiting' }, watched.last.waiting);
            this.set({ queue: watched.queue.name, state: 'in_flight' }, watched.last.inFlight);
          }),
        );
      },
    });
    const patternOf = this.patternOf;
    const sleepers = this.sleepers;
    new Gauge({
      name: 'microtask_flows_running',
      help: 'Flows this daemon runs now (started or resumed here and not ended, those asleep included), by pattern.',
      labelNames: ['pattern'],
      registers,
      collect() {
        this.reset();
        const counts = new Map<string, number>();
        for (const pattern of patternOf.values()) counts.set(pattern, (counts.get(pattern) ?? 0) + 1);
        // A flow resumed straight to sleep journals nothing until it wakes: counted from the daemon, once.
        for (const sleeper of sleepers) {
          for (const { flowId, pattern } of sleeper.asleepFlows()) if (!patternOf.has(flowId)) counts.set(pattern, (counts.get(pattern) ?? 0) + 1);
        }
        for (const [pattern, n] of counts) this.set({ pattern }, n);
      },
    });
    new Gauge({
      name: 'microtask_flows_asleep',
      help: 'Flows this daemon holds asleep: they only wait (for a person, an event, a deadline), kept as their records without their snapshots until something arrives.',
      registers,
      collect() {
        let asleep = 0;
        for (const sleeper of sleepers) asleep += sleeper.flowsAsleep();
        this.set(asleep);
      },
    });
  }

  /** The text `/metrics` answers. */
  async text(): Promise<string> {
    return this.registry.metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  /** A journal entry as FlowHost appends it (tee the daemon's journal to this). */
  observe(entry: JournalEntry): void {
    switch (entry.kind) {
      case 'flow': {
        const { pattern } = entry;
        if (entry.phase === 'started') {
          this.flowsStarted.inc({ pattern });
          this.patternOf.set(entry.flowId, pattern);
        } else if (entry.phase === 'resumed') {
          this.flowsResumed.inc({ pattern });
          this.patternOf.set(entry.flowId, pattern);
        } else {
          const outcome = outcomeOf(entry.output);
          this.flowsEnded.inc({ pattern, status: entry.status, outcome });
          if (outcome === 'budget_exceeded') this.budgetStops.inc({ pattern });
          this.patternOf.delete(entry.flowId);
        }
        return;
      }
      case 'transition':
        this.transitions.inc({ pattern: this.patternOf.get(entry.flowId) ?? '' });
        return;
      case 'step':
        this.saves.inc({ pattern: this.patternOf.get(entry.flowId) ?? '' });
        return;
      case 'microtask': {
        const result = entry.result;
        if (entry.phase !== 'finished' || !result) return;
        const outcome = result.success ? (result.cached ? 'cached' : 'ok') : result.fallback !== undefined ? 'fallback' : 'failed';
        this.microtasks.inc({ task_type: result.taskType, outcome, error_kind: result.error?.kind ?? '' });
        return;
      }
    }
  }

  /**
   * The same model, each call timed and its tokens counted, labelled with the model asked
   * for (the request's, else `defaultModel`): a failed call has no answer to name one.
   */
  meterModel(model: ModelPort, defaultModel: string): ModelPort {
    const calls = this.modelCalls;
    const tokens = this.tokens;
    return {
      name: model.name,
      async call<T = string>(request: ModelRequest<T>): Promise<ModelResponse<T>> {
        const name = request.model ?? defaultModel;
        const started = process.hrtime.bigint();
        const seconds = () => Number(process.hrtime.bigint() - started) / 1e9;
        let response: ModelResponse<T>;
        try {
          response = await model.call(request);
        } catch (e) {
          const kind = (e as { kind?: unknown }).kind;
          calls.observe({ model: name, outcome: typeof kind === 'string' ? kind : 'unknown' }, seconds());
          throw e;
        }
        calls.observe({ model: name, outcome: 'ok' }, seconds());
        tokens.inc({ model: name, kind: 'input' }, response.usage.inputTokens);
        tokens.inc({ model: name, kind: 'output' }, response.usage.outputTokens);
        tokens.inc({ model: name, kind: 'cache_creation' }, response.usage.cacheCreationInputTokens);
        tokens.inc({ model: name, kind: 'cache_read' }, response.usage.cacheReadInputTokens);
        return response;
      },
    };
  }

  /** The same queue, each job taken through it counted: deliveries, redeliveries, and how it was settled. */
  meterQueue(queue: WorkQueue): WorkQueue {
    const labels = { queue: queue.name };
    const metered = (job: Job): Job => ({
      get id() {
        return job.id;
      },
      get data() {
        return job.data;
      },
      // The trace context the job came with: the worker's spans continue the daemon's trace.
      get headers() {
        return job.headers;
      },
      json: <T>() => job.json<T>(),
      deliveryCount: job.deliveryCount,
      maxDeliver: job.maxDeliver,
      ack: async () => {
        await job.ack();
        this.acked.inc(labels);
      },
      retry: async (delayMs) => {
        await job.retry(delayMs);
        this.retries.inc(labels);
      },
      working: () => job.working(),
      deadLetter: async (reason) => {
        await job.deadLetter(reason);
        this.deadLetters.inc(labels);
      },
    });
    return {
      name: queue.name,
      enqueue: (id, data, options) => queue.enqueue(id, data, options),
      depth: () => queue.depth(),
      consume: (handler, options) =>
        queue.consume((job) => {
          this.deliveries.inc(labels);
          if (job.deliveryCount > 1) this.redeliveries.inc(labels);
          return handler(metered(job));
        }, options),
    };
  }

  /** Reports on each scrape how many flows this daemon holds asleep (once per daemon, however often it is given). */
  watchFlowsAsleep(daemon: FlowsAsleep): void {
    this.sleepers.add(daemon);
  }

  /** Reports the queue's depth on each scrape. */
  watchQueue(queue: WorkQueue): void {
    if (!this.queues.has(queue.name)) this.queues.set(queue.name, { queue, last: { waiting: 0, inFlight: 0 } });
  }
}

/** What holds flows asleep: a daemon (its flow host, src/flowSleeping.ts). */
export interface FlowsAsleep {
  flowsAsleep(): number;
  asleepFlows(): Iterable<{ flowId: string; pattern: string }>;
}

/** The pattern's own word for how it ended (`output.status`), when it has one. */
function outcomeOf(output: unknown): string {
  const status = output && typeof output === 'object' ? (output as { status?: unknown }).status : undefined;
  return typeof status === 'string' ? status : '';
}

function withTimeout<T>(promise: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms)));
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}
