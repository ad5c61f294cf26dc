import { z } from 'zod';
import { ToolSpecSchema } from '../contracts/toolSpec.js';

/**
 * The daemon's public protocol on the bus: what each subject takes and answers.
 * docs/protocol.md documents it for clients that use no code of this project.
 */

export const ErrorCodeSchema = z.enum([
  'BAD_JSON', // the payload is not JSON
  'INVALID_INPUT', // JSON of the wrong shape; the message lists each problem
  'UNKNOWN_PATTERN', // flow.start.<pattern> names no pattern
  'TOO_LARGE', // the payload is over the daemon's limit
  'FLOW_NOT_FOUND', // no flow has this id
  'FLOW_FINISHED', // cancel of a flow that already ended
  'INTERNAL', // the daemon failed; the message says how, the logs say more
]);
export type ErrorCode = z.infer<typeof ErrorCodeSchema>;

export const ToolBuildRequestSchema = ToolSpecSchema;

export const FlowStartRequestSchema = z.object({
  input: z.unknown(),
  requestId: z.string().min(1).max(200).optional(),
});

export const FlowIdRequestSchema = z.object({ flowId: z.string().min(1).max(200) });

/** Lifecycle of a flow, as clients see it. How it ended is in `output.status`. */
export const FlowStatusSchema = z.enum(['running', 'done', 'failed', 'cancelled']);
export type FlowStatus = z.infer<typeof FlowStatusSchema>;

export const FlowRecordSchema = z.object({
  flowId: z.string(),
  pattern: z.string(),
  status: FlowStatusSchema,
  /** The root machine's state value. */
  state: z.unknown(),
  updatedAt: z.string(),
  requestId: z.string().optional(),
  output: z.unknown().optional(),
  error: z.object({ code: z.string(), message: z.string() }).optional(),
});
export type FlowRecord = z.infer<typeof FlowRecordSchema>;

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

export type Answer<T extends object = { flowId: string }> =
  | ({ ok: true } & T)
  | { ok: false; error: { code: ErrorCode; message: string } };

export class ProtocolError extends Error {
  override readonly name = 'ProtocolError';
  constructor(
    readonly code: ErrorCode,
    message: string,
  ) {
    super(message);
  }
}
