import type { AnyActorRef } from 'xstate';
import { MicrotaskResultSchema } from './contracts/microtask.js';
import type { Journal, JournalEntry } from './journal/Journal.js';
import type { FlowStep } from './persistence/SnapshotStore.js';
import { actorPath, type DistributiveOmit, type HostedFlow, type MicrotaskStart } from './hostedFlow.js';

/**
 * What a flow did, as it happens, for its journal (`microtask show`, the inspector, live
 * progress): each machine's transition, each microtask's start (its prompt) and end (its
 * result), the flow's start, resumes and end, and its steps. It also keeps the microtasks
 * each flow has in flight (a cancel withdraws their tasks, a drain waits for them), which
 * the host needs with or without a journal. The flow never waits on the journal.
 */
export class FlowJournaling {
  constructor(
    private readonly journal: Journal | undefined,
    /** Told when a draining flow's last microtask in flight finished: it stops there. */
    private readonly onDrained: (hosted: HostedFlow) => void,
  ) {}

  /**
   * For the journal: writes each machine's transition as it happens, and a microtask's
   * start (its first snapshot) and end (its output, the result envelope).
   */
  note(hosted: HostedFlow, ref: AnyActorRef, snapshot: Record<string, unknown>, eventType: string) {
    const machine = (ref as { logic?: { id?: unknown } }).logic?.id;
    if (typeof machine === 'string') {
      // XState hands a child's result to its parent before it reports the child done: say
      // the microtask finished before the transition its result caused.
      if (eventType.startsWith('xstate.done.actor.')) {
        for (const [child, started] of hosted.microtasks) {
          const childSnapshot = child.getSnapshot() as { status?: string; output?: unknown };
          if (childSnapshot.status === 'done') this.microtaskFinished(hosted, child, started, childSnapshot.output);
        }
      }
      // A child that ends or is stopped with its parent moved nowhere new.
      if (snapshot.status === 'active' || snapshot.status === 'done') {
        this.append(hosted, { kind: 'transition', actor: actorPath(ref, hosted.actor), machine, state: snapshot.value, event: eventType });
      }
      return;
    }
    // A promise actor drops its input when done: its start is remembered by reference.
    const started = hosted.microtasks.get(ref);
    if (started) {
      if (snapshot.status === 'done') this.microtaskFinished(hosted, ref, started, snapshot.output);
      return;
    }
    const input = snapshot.input as { taskType?: unknown; task?: unknown; key?: unknown; prompt?: unknown; system?: unknown; data?: unknown; input?: unknown } | undefined;
    if (typeof input?.key !== 'string') return;
    // A microtask (a model call), or a task of the user's module (src/actors/task.ts): both
    // are journaled, withdrawn on cancel and waited for by a drain; a task's entry has its
    // name as its type, its input as its data, and no prompt.
    const isMicrotask = typeof input.taskType === 'string' && typeof input.prompt === 'string';
    const isTask = !isMicrotask && typeof input.task === 'string';
    if (!isMicrotask && !isTask) return;
    const taskType = (isMicrotask ? input.taskType : input.task) as string;
    const base = { kind: 'microtask' as const, actor: actorPath(ref, hosted.actor), key: input.key, taskType };
    hosted.microtasks.set(ref, base);
    if (!this.journal) return;
    const data = isMicrotask ? input.data : input.input;
    const entry = {
      ...base,
      phase: 'started' as const,
      ...(isMicrotask ? { prompt: input.prompt as string } : {}),
      ...(typeof input.system === 'string' ? { system: input.system } : {}),
      ...(data !== undefined ? { data } : {}),
    };
    // A child starts while its parent's transition is still being processed: journal the
    // start after that transition, which is reported when the processing ends.
    queueMicrotask(() => this.append(hosted, entry));
  }

  private microtaskFinished(hosted: HostedFlow, ref: AnyActorRef, started: MicrotaskStart, output: unknown) {
    hosted.microtasks.delete(ref);
    if (this.journal) {
      const result = MicrotaskResultSchema.safeParse(output);
      this.append(hosted, { ...started, phase: 'finished', ...(result.success ? { result: result.data } : {}) });
    }
    // Draining: the flow stops once what it had in flight is done. A microtask its machine
    // started on this result has not called its model yet (its runner is still awaiting
    // the results store), so stopping now aborts it before it costs anything.
    if (hosted.awaiting?.delete(ref) && hosted.awaiting.size === 0) this.onDrained(hosted);
  }

  append(hosted: Pick<HostedFlow, 'flowId'>, entry: DistributiveOmit<JournalEntry, 'flowId' | 'at'>, snapshotJson?: string) {
    this.journal?.append({ ...entry, flowId: hosted.flowId, at: new Date().toISOString() } as JournalEntry, snapshotJson);
  }

  /** Journals a step; `stored` when the snapshot store has saved it (it keeps steps, and the save resolved). */
  step(hosted: HostedFlow, step: FlowStep, stored = false): void | Promise<void> {
    if (!this.journal) return;
    const { snapshotJson, at, ...rest } = step;
    return this.journal.append({ ...rest, kind: 'step', flowId: hosted.flowId, at, snapshot: undefined }, snapshotJson, stored);
  }
}
