import { z } from 'zod';
import { FlowStatusSchema, type FlowDone, type FlowEvent, type FlowStatus } from '../contracts/flowEvents.js';
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
  'REQUEST_ID_CONFLICT', // the requestId already started a flow of this pattern with another input
  'INTERNAL', // the daemon failed; the message says how, the logs say more
]);
export type ErrorCode = z.infer<typeof ErrorCodeSchema>;

export const ToolBuildRequestSchema = ToolSpecSchema;

export const FlowStartRequestSchema = z.object({
  input: z.unknown(),
  requestId: z.string().min(1).max(200).optional(),
});

export const FlowIdRequestSchema = z.object({ flowId: z.string().min(1).max(200) });

export { FlowStatusSchema, type FlowStatus, type FlowEvent, type FlowDone };

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
