import type { FlowEvent } from '../contracts/flowEvents.js';

/**
 * A queue one `for await` reads: what is pushed, in order, then its end or a failure.
 * `return` (a `break` out of the loop) stops it and lets its source go.
 */
export class Channel<T> implements AsyncIterableIterator<T> {
  private readonly items: T[] = [];
  private reader: { resolve: (r: IteratorResult<T>) => void; reject: (e: unknown) => void } | undefined;
  private ended = false;
  private failure: { error: unknown } | undefined;

  constructor(private readonly onStop: () => void = () => undefined) {}

  push(item: T): void {
    if (this.ended || this.failure) return;
    if (this.reader) this.take().resolve({ value: item, done: false });
    else this.items.push(item);
  }

  end(): void {
    if (this.ended) return;
    this.ended = true;
    if (this.reader && this.items.length === 0) this.take().resolve({ value: undefined, done: true });
  }

  fail(error: unknown): void {
    if (this.ended || this.failure) return;
    this.failure = { error };
    this.items.length = 0;
    if (this.reader) this.take().reject(error);
  }

  next(): Promise<IteratorResult<T>> {
    if (this.items.length > 0) return Promise.resolve({ value: this.items.shift()!, done: false });
    if (this.failure) return Promise.reject(this.failure.error);
    if (this.ended) return Promise.resolve({ value: undefined, done: true });
    return new Promise((resolve, reject) => (this.reader = { resolve, reject }));
  }

  async return(): Promise<IteratorResult<T>> {
    this.items.length = 0;
    this.end();
    this.onStop();
    return { value: undefined, done: true };
  }

  [Symbol.asyncIterator](): this {
    return this;
  }

  private take() {
    const reader = this.reader!;
    this.reader = undefined;
    return reader;
  }
}

/**
 * A flow's events as a reader wants them, whatever their source: in seq order, each seq
 * once (a resumed flow announces its last one again), ending with its end (the event whose
 * status is not `running`).
 */
export async function* inOrder(source: AsyncIterable<FlowEvent>): AsyncGenerator<FlowEvent, void, undefined> {
  let last = 0;
  for await (const event of source) {
    if (event.seq <= last) continue;
    last = event.seq;
    yield event;
    if (event.status !== 'running') return;
  }
}

/** How many ended flows' histories are kept for a late reader (the rest read their end from the record). */
const ENDED_KEPT = 1_000;

/**
 * The events of the flows an embedded orchestrator runs, as its FlowHost announces them
 * (after each step is saved): kept per flow while it runs (and for the last ENDED_KEPT
 * that ended), so that a reader who comes late replays them, then reads the live ones.
 * Nothing outlives the process: the journal is the durable history (`microtask show`).
 */
export class FlowFeed {
  private readonly flows = new Map<string, { events: FlowEvent[]; readers: Set<Channel<FlowEvent>>; ended: boolean }>();
  private readonly ended: string[] = [];

  announce(event: FlowEvent): void {
    const flow = this.entry(event.flowId);
    flow.events.push(event);
    for (const reader of flow.readers) reader.push(event);
    if (event.status === 'running' || flow.ended) return;
    flow.ended = true;
    for (const reader of flow.readers) reader.end();
    flow.readers.clear();
    this.ended.push(event.flowId);
    if (this.ended.length > ENDED_KEPT) this.flows.delete(this.ended.shift()!);
  }

  /** A reader of the flow's events: those kept, then each as announced, until its end. */
  follow(flowId: string): Channel<FlowEvent> {
    const flow = this.entry(flowId);
    const reader: Channel<FlowEvent> = new Channel(() => {
      flow.readers.delete(reader);
      // Made for a reader of a flow that never announced anything here: not kept.
      if (flow.events.length === 0 && flow.readers.size === 0 && this.flows.get(flowId) === flow) this.flows.delete(flowId);
    });
    for (const event of flow.events) reader.push(event);
    if (flow.ended) reader.end();
    else flow.readers.add(reader);
    return reader;
  }

  /** Fails every reader still waiting (the orchestrator closed). */
  close(error: unknown): void {
    for (const flow of this.flows.values()) {
      for (const reader of flow.readers) reader.fail(error);
      flow.readers.clear();
    }
  }

  private entry(flowId: string) {
    let flow = this.flows.get(flowId);
    if (!flow) this.flows.set(flowId, (flow = { events: [], readers: new Set(), ended: false }));
    return flow;
  }
}
