import { z } from 'zod';
import { FlowStatusSchema, type FlowDone, type FlowEvent, type FlowStatus } from '../contracts/flowEvents.js';
import { ToolSpecSchema } from '../contracts/toolSpec.js';
import { FlowWaitSchema, SentEventSchema } from '../contracts/waits.js';

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
  'EVENT_NOT_ACCEPTED', // flow.send: the flow waits for no event of this type now; the message lists what it waits for
  'INVALID_EVENT', // flow.send: the event's data is not what the flow waits for; the message lists each problem
  'WAIT_EXPIRED', // flow.send: the wait's deadline passed
  'STALE_EVENT', // an answer checked against one wait, and the flow now waits for another (a later pass)
  'INTERNAL', // the daemon failed; the message says how, the logs say more
]);
export type ErrorCode = z.infer<typeof ErrorCodeSchema>;

export const ToolBuildRequestSchema = ToolSpecSchema;

const requestId = z
  .string()
  .min(1)
  .max(200)
  .meta({
    description:
      "Makes a retry safe: the same requestId with the same input answers the flow it started. Scoped per pattern; " +
      'with another input it is refused (REQUEST_ID_CONFLICT).',
  });

export const FlowStartRequestSchema = z.object({
  input: z.unknown().meta({ description: "The pattern's input (in docs/asyncapi.json: components.schemas.<Pattern>Input, such as FeedbackLoopInput; examples/<pattern>.json)." }),
  requestId: requestId.optional(),
});

export const FlowIdRequestSchema = z.object({ flowId: z.string().min(1).max(200) });

export const FlowSendRequestSchema = SentEventSchema.extend({
  flowId: z.string().min(1).max(200),
  eventId: SentEventSchema.shape.eventId.optional().meta({
    description: 'Makes a retry safe: an id already applied to the flow is not applied again. Without one, each send is a new event.',
  }),
});

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
  waiting: z.array(FlowWaitSchema).optional(),
});
export type FlowRecord = z.infer<typeof FlowRecordSchema>;

export type Answer<T extends object = { flowId: string }> =
  | ({ ok: true } & T)
  | { ok: false; error: { code: ErrorCode; message: string } };

// ---------------------------------------------------------------------------------
// The messages on the wire, for clients: src/daemon/asyncapi.ts publishes them as
// docs/asyncapi.json (`npm run asyncapi`; a test fails when the two differ). The schemas
// above check what comes in; these say what goes out.

/** The protocol's named schemas: each becomes `components.schemas.<id>` in docs/asyncapi.json. */
export const protocolSchemas = z.registry<{ id: string }>();

/** XState's state value: a state's name, or `{ parent: child }` for a state inside a compound or parallel one. */
export type StateValue = string | { [state: string]: StateValue };
export const StateValueSchema: z.ZodType<StateValue> = z
  .union([z.string(), z.record(z.string(), z.lazy(() => StateValueSchema))])
  .meta({
    description:
      "The flow's root machine's state value, as XState gives it: the name of the state it is in " +
      '("integrating"; every pattern today), or, for a machine with states inside states, an object naming ' +
      'the state it is in inside each active one ({"generating": "waiting"}; several keys for parallel states), to any depth.',
  })
  .register(protocolSchemas, { id: 'StateValue' });

const flowState = StateValueSchema.nullable().meta({ description: 'The state value; null before the machine took its first step.' });

export const FlowErrorSchema = z
  .object({
    code: z.string().meta({
      description:
        'CANCELLED (flow.cancel), FLOW_CRASHED (the machine threw; the flow cannot go on), ' +
        'INCOMPATIBLE_SNAPSHOT (a saved flow whose pattern changed version: this build cannot resume it; flow.get only)',
    }),
    message: z.string().meta({ description: 'What happened, for a person; secrets scrubbed.' }),
  })
  .meta({ description: 'Why a flow ended without an output. Absent when the machine reached its final state.' })
  .register(protocolSchemas, { id: 'FlowError' });

const flowOutput = z.unknown().meta({
  description:
    "The machine's output, when it reached its final state (its `status` says how: done, exhausted, " +
    'budget_exceeded, failed). Absent for a cancelled or crashed flow.',
});

export const FlowEventSchema = z
  .object({
    flowId: z.string(),
    seq: z.number().int().min(1).meta({
      description: '1, 2, 3, ... per flow, no gaps. A flow resumed after a crash may announce its last seq again: keep the later copy.',
    }),
    state: flowState,
    status: FlowStatusSchema,
    at: z.string().meta({ description: 'ISO 8601 time of the step.' }),
  })
  .meta({ description: 'One step of a flow: published after the step is saved.' })
  .register(protocolSchemas, { id: 'FlowEvent' });

export const FlowDoneSchema = z
  .object({
    flowId: z.string(),
    status: FlowStatusSchema.exclude(['running']),
    output: flowOutput.optional(),
    error: FlowErrorSchema.optional(),
  })
  .meta({ description: "A flow's end, once: `output` when its machine finished, `error` when it was cancelled or crashed." })
  .register(protocolSchemas, { id: 'FlowDone' });

export const FlowStartedSchema = z
  .object({ ok: z.literal(true), flowId: z.string() })
  .meta({ description: 'The flow started (or the one the same requestId and input started before; or, for cancel, the flow cancelled).' })
  .register(protocolSchemas, { id: 'FlowStarted' });

export const FlowGetAnswerSchema = z
  .object({
    ok: z.literal(true),
    flowId: z.string(),
    pattern: z.string(),
    status: FlowStatusSchema,
    state: flowState,
    updatedAt: z.string().meta({ description: 'ISO 8601 time of the last saved step.' }),
    requestId: z.string().optional(),
    output: flowOutput.optional(),
    error: FlowErrorSchema.optional(),
    waiting: z.array(FlowWaitSchema).optional().meta({ description: 'What the flow waits for (a person, an outside event): send it with flow.send. Absent: nothing.' }),
  })
  .meta({ description: "The flow's saved record." })
  .register(protocolSchemas, { id: 'FlowGetAnswer' });

export const ErrorAnswerSchema = z
  .object({
    ok: z.literal(false),
    error: z.object({ code: ErrorCodeSchema, message: z.string().meta({ description: 'What to fix, for a person.' }) }),
  })
  .meta({ description: 'A request that cannot be served.' })
  .register(protocolSchemas, { id: 'ErrorAnswer' });

export const RequestErrorSchema = z
  .object({ subject: z.string().meta({ description: 'The subject the bad request came on.' }), error: ErrorAnswerSchema.shape.error })
  .meta({ description: 'The error of a request sent without a reply subject.' })
  .register(protocolSchemas, { id: 'RequestError' });

export const DeadLetterSchema = z
  .object({
    id: z.string().meta({ description: "The task's id in the work queue." }),
    reason: z.string().meta({ description: 'Why its last delivery failed.' }),
    deliveryCount: z.number().int().min(1),
    data: z.string().meta({ description: 'The task as it was queued (JSON text).' }),
  })
  .meta({ description: 'A microtask that failed every delivery.' })
  .register(protocolSchemas, { id: 'DeadLetter' });

ToolBuildRequestSchema.register(protocolSchemas, { id: 'ToolBuildRequest' });
FlowStartRequestSchema.register(protocolSchemas, { id: 'FlowStartRequest' });
FlowIdRequestSchema.register(protocolSchemas, { id: 'FlowIdRequest' });
FlowSendRequestSchema.register(protocolSchemas, { id: 'FlowSendRequest' });
FlowWaitSchema.register(protocolSchemas, { id: 'FlowWait' });
SentEventSchema.register(protocolSchemas, { id: 'SentEvent' });

export const FlowSentAnswerSchema = z
  .object({
    ok: z.literal(true),
    flowId: z.string(),
    eventId: z.string(),
    duplicate: z.boolean().optional().meta({ description: 'True when this eventId was already applied: nothing more was done.' }),
  })
  .meta({ description: "The event is kept in the flow's inbox and will be applied, in order, by the daemon that runs the flow." })
  .register(protocolSchemas, { id: 'FlowSentAnswer' });
ErrorCodeSchema.register(protocolSchemas, { id: 'ErrorCode' });
FlowStatusSchema.register(protocolSchemas, { id: 'FlowStatus' });

export class ProtocolError extends Error {
  override readonly name = 'ProtocolError';
  constructor(
    readonly code: ErrorCode,
    message: string,
  ) {
    super(message);
  }
}
