import { z } from 'zod';

/**
 * What a flow announces as it runs: FlowHost publishes these, the daemon carries them on the
 * bus (docs/protocol.md), clients read them. Here rather than in src/daemon because FlowHost
 * also runs flows without a daemon (the CLI's embedded `run`, the library).
 */

/** Lifecycle of a flow, as clients see it. How it ended is in `output.status`. */
export const FlowStatusSchema = z.enum(['running', 'done', 'failed', 'cancelled']);
export type FlowStatus = z.infer<typeof FlowStatusSchema>;

export interface FlowEvent {
  flowId: string;
  /** 1, 2, 3, ... per flow, no gaps. */
  seq: number;
  state: unknown;
  status: FlowStatus;
  at: string;
}

export interface FlowDone {
  flowId: string;
  status: Exclude<FlowStatus, 'running'>;
  output?: unknown;
  error?: { code: string; message: string };
}
