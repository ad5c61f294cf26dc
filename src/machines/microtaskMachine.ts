import { assign, setup } from 'xstate';
import type { MicrotaskInput, MicrotaskResult } from '../contracts/microtask.js';
import { zeroUsage } from '../contracts/usage.js';
import { errorInfo, microtaskNotProvided, type FlowOutputBase } from './common.js';

export interface MicrotaskMachineOutput extends FlowOutputBase {
  /** The microtask's answer when it succeeded, its fallback otherwise. */
  result: unknown;
  timedOut: boolean;
  envelope: MicrotaskResult;
}

/**
 * The microtask executor as a machine: running → done, or timedOut / failed with the
 * task type's fallback. The timeout itself is enforced inside the microtask actor by
 * AbortSignal (an `after` delay would not survive a restore).
 */
export const microtaskMachine = setup({
  types: {
    input: {} as MicrotaskInput,
    context: {} as { input: MicrotaskInput; envelope: MicrotaskResult | undefined },
    output: {} as MicrotaskMachineOutput,
  },
  actors: { microtask: microtaskNotProvided() },
  guards: {
    succeeded: (_, params: { envelope: MicrotaskResult }) => params.envelope.success,
    timedOut: (_, params: { envelope: MicrotaskResult }) => params.envelope.error?.kind === 'timeout',
  },
  actions: {
    storeEnvelope: assign((_, params: { envelope: MicrotaskResult }) => ({ envelope: params.envelope })),
    storeThrown: assign(({ context }, params: { error: unknown }) => {
      // The actor only throws when it could not run at all (not provided, transport down).
      const { message } = errorInfo(params.error);
      return {
        envelope: {
          success: false,
          taskType: context.input.taskType,
          key: context.input.key,
          error: { kind: 'unknown' as const, message, retryable: false },
          durationMs: 0,
          usage: zeroUsage(),
          cached: false,
        },
      };
    }),
  },
}).createMachine({
  id: 'microtask',
  context: ({ input }) => ({ input, envelope: undefined }),
  initial: 'running',
  states: {
    running: {
      invoke: {
        src: 'microtask',
        input: ({ context }) => context.input,
        onDone: [
          {
            guard: { type: 'succeeded', params: ({ event }) => ({ envelope: event.output }) },
            target: 'done',
            actions: { type: 'storeEnvelope', params: ({ event }) => ({ envelope: event.output }) },
          },
          {
            guard: { type: 'timedOut', params: ({ event }) => ({ envelope: event.output }) },
            target: 'timedOut',
            actions: { type: 'storeEnvelope', params: ({ event }) => ({ envelope: event.output }) },
          },
          { target: 'failed', actions: { type: 'storeEnvelope', params: ({ event }) => ({ envelope: event.output }) } },
        ],
        onError: { target: 'failed', actions: { type: 'storeThrown', params: ({ event }) => ({ error: event.error }) } },
      },
    },
    done: { type: 'final' },
    timedOut: { type: 'final' },
    failed: { type: 'final' },
  },
  output: ({ context }) => {
    const envelope = context.envelope!;
    return {
      status: envelope.success ? 'done' : 'failed',
      ...(envelope.success ? {} : { reason: `${envelope.error?.kind}: ${envelope.error?.message}` }),
      result: envelope.success ? envelope.result : envelope.fallback,
      timedOut: envelope.error?.kind === 'timeout',
      usage: envelope.usage,
      envelope,
    };
  },
});
