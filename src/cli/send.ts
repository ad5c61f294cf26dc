import { randomUUID } from 'node:crypto';
import { loadConfig } from '../config.js';
import { EventRefusedError, SentEventSchema } from '../flowWaits.js';
import { provideFlows } from '../flows.js';
import { JsonInputError, parseJsonInput } from '../jsonInput.js';
import { createLogger } from '../log.js';
import { microtaskNotProvided } from '../machines/common.js';
import { SendError, sendEvent } from '../sendEvent.js';
import { openFlowState } from '../composition.js';
import { DaemonClient } from './busClient.js';
import { ExitCode, UsageError } from './exitCodes.js';

export interface SendOptions {
  data?: string;
  id?: string;
}

/** `--data`: JSON, refused in one line when it is not. */
export function parseData(text: string | undefined): unknown {
  if (text === undefined) return undefined;
  try {
    return parseJsonInput(Buffer.from(text));
  } catch (e) {
    if (e instanceof JsonInputError) throw new UsageError(`--data ${e.message}`, 'BAD_JSON');
    throw e;
  }
}

/**
 * `microtask send <flowId> <type>` (and approve, reject): the event checked against what
 * the flow waits for, kept in its inbox, applied by whatever runs the flow (a daemon, a
 * `run` in another terminal) or by its resume. With NATS_URL the daemon is asked
 * (flow.send); with none running, the CLI checks it against the stored snapshot and keeps
 * it in the stream itself.
 */
export async function sendCommand(flowId: string, type: string, options: SendOptions): Promise<number> {
  const data = parseData(options.data);
  const eventId = options.id ?? randomUUID();
  const id = SentEventSchema.shape.eventId.safeParse(eventId);
  if (!id.success) throw new UsageError(`--id ${JSON.stringify(eventId.slice(0, 40))}: ${id.error.issues[0]?.message ?? 'not an event id'} (at most 200)`, 'INVALID_INPUT');
  const event = { eventId, type, ...(data !== undefined ? { data } : {}) };
  const config = loadConfig();
  const logger = createLogger(config.MICROTASK_LOG_LEVEL ?? 'error');
  await using state = await openFlowState(config, logger, 'cli');
  {
    let duplicate: boolean | undefined;
    if (state.bus) {
      duplicate = await new DaemonClient(state.bus, config.MICROTASK_SUBJECT_PREFIX).send(flowId, event).then(
        (r) => r.duplicate,
        (e: unknown) => {
          if (e instanceof UsageError && e.code === 'NO_DAEMON') return undefined;
          throw e;
        },
      );
    }
    if (duplicate === undefined) {
      const inbox = await state.inbox();
      try {
        duplicate = (await sendEvent({ store: state.store, inbox, flows: provideFlows({ microtask: microtaskNotProvided() }) }, flowId, event)).duplicate;
      } catch (e) {
        if (e instanceof EventRefusedError || e instanceof SendError) throw new UsageError(e.message, e.code);
        throw e;
      }
    }
    process.stderr.write(
      duplicate
        ? `flow ${flowId} had already applied event ${eventId}: nothing more done\n`
        : `sent ${type} to flow ${flowId} (event ${eventId}): applied by the process running it, or when it is resumed\n`,
    );
    return ExitCode.ok;
  }
}
