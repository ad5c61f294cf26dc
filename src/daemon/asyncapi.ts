import { z } from 'zod';
import { subjects } from '../bus/subjects.js';
import { patternInputSchemas, patternNames } from '../patterns/index.js';
import { protocolSchemas } from './protocol.js';

/**
 * The daemon's protocol as an AsyncAPI 3 document, generated from the zod schemas in
 * protocol.ts and the pattern inputs: `npm run asyncapi` writes it to docs/asyncapi.json,
 * and test/asyncapi.test.ts fails when the committed file is not what this returns.
 * Written from the daemon's side: it receives the requests, sends the answers and messages.
 */
export function asyncApiDocument(version: string): Record<string, unknown> {
  const names = subjects();
  const ref = (path: string) => ({ $ref: `#/${path}` });
  const schema = (id: string) => ref(`components/schemas/${id}`);
  const message = (name: string, payload: string, summary: string) => ({ [name]: { name, summary, payload: schema(payload) } });
  const inChannel = (channel: string, name: string) => ref(`channels/${channel}/messages/${name}`);

  const patternInputs = Object.fromEntries(patternNames.map((pattern) => [`${pascal(pattern)}Input`, patternInputSchemas[pattern]]));
  const registry = z.registry<{ id: string }>();
  for (const [id, s] of Object.entries(patternInputs)) registry.add(s as z.ZodType, { id });
  const generated = {
    ...jsonSchemas(protocolSchemas),
    ...jsonSchemas(registry),
  };

  const flowIdParameter = { flowId: { description: 'The flow id a start answered (`<pattern>-<time>-<random>`).' } };
  const replyChannel = {
    address: null,
    description: "The request's reply subject (an inbox the client chose): one answer per request.",
    messages: {
      ...message('flowStarted', 'FlowStarted', 'The flow started, found, or cancelled'),
      ...message('flowGetAnswer', 'FlowGetAnswer', "A flow's record"),
      ...message('flowSentAnswer', 'FlowSentAnswer', 'The event is kept for the flow'),
      ...message('errorAnswer', 'ErrorAnswer', 'The request cannot be served'),
    },
  };
  const reply = (...answers: string[]) => ({
    channel: ref('channels/reply'),
    messages: answers.map((answer) => inChannel('reply', answer)),
  });

  return {
    asyncapi: '3.0.0',
    info: {
      title: 'Microtask Orchestrator daemon',
      version,
      description:
        'The subjects `microtask daemon` serves on NATS, and what it publishes. Payloads are JSON (UTF-8). ' +
        'Subjects start with MICROTASK_SUBJECT_PREFIX (`microtask` here); stream and bucket names with it in capitals. ' +
        'docs/protocol.md explains the guarantees (request ids, replay, dedupe by seq) and the error codes. ' +
        'Generated from src/daemon/protocol.ts by `npm run asyncapi`.',
    },
    defaultContentType: 'application/json',
    servers: {
      nats: {
        host: 'localhost:4222',
        protocol: 'nats',
        description:
          'Any NATS server with JetStream on. The protocol has no authentication of its own: the server authenticates ' +
          'each connection and its permissions decide who may publish the requests (see docs/protocol.md, Authentication).',
        security: ['natsUserPassword', 'natsToken', 'natsCredentials', 'natsTls'].map((name) => ref(`components/securitySchemes/${name}`)),
      },
    },
    channels: {
      toolBuild: {
        address: names.toolBuildRequest,
        messages: message('toolBuildRequest', 'ToolBuildRequest', 'Build a command-line tool from a spec'),
      },
      flowStart: {
        address: names.flowStart('{pattern}'),
        parameters: { pattern: { enum: [...patternNames], description: 'Which pattern to run.' } },
        messages: message('flowStartRequest', 'FlowStartRequest', 'Start a flow of a pattern'),
      },
      flowGet: { address: names.flowGet, messages: message('flowGetRequest', 'FlowIdRequest', "Ask for a flow's record") },
      flowCancel: { address: names.flowCancel, messages: message('flowCancelRequest', 'FlowIdRequest', 'Cancel a running flow') },
      flowSend: { address: names.flowSend, messages: message('flowSendRequest', 'FlowSendRequest', 'Send an event to a flow that waits for one') },
      flowInbox: {
        address: names.flowInbox('{flowId}'),
        description:
          "Stored in the JetStream stream MICROTASK_LOG_inbox: an event kept for the flow, whether or not a daemon runs; the daemon running it (or its resume) applies it. `eventId` is required here.",
        parameters: flowIdParameter,
        messages: message('flowInboxEvent', 'SentEvent', 'An event for the flow'),
      },
      reply: replyChannel,
      flowEvents: {
        address: names.flowEvents('{flowId}'),
        description: 'Stored in the JetStream stream MICROTASK_LOG_flows: replay from the first message.',
        parameters: flowIdParameter,
        messages: message('flowEvent', 'FlowEvent', 'A step of the flow'),
      },
      flowDone: {
        address: names.flowDone('{flowId}'),
        description: 'Stored in the JetStream stream MICROTASK_LOG_flows.',
        parameters: flowIdParameter,
        messages: message('flowDone', 'FlowDone', 'The flow ended'),
      },
      errors: {
        address: names.errors,
        messages: message('requestError', 'RequestError', 'The error of a request that had no reply subject'),
      },
      deadLetters: {
        address: names.deadLetters,
        description: 'Stored in the JetStream stream MICROTASK_DLQ_microtask_tasks_dead (or in a stream that already holds the subject).',
        messages: message('deadLetter', 'DeadLetter', 'A microtask that failed every delivery'),
      },
    },
    operations: {
      buildTool: {
        action: 'receive',
        channel: ref('channels/toolBuild'),
        summary: 'Starts the tool-builder flow for a spec.',
        messages: [inChannel('toolBuild', 'toolBuildRequest')],
        reply: reply('flowStarted', 'errorAnswer'),
      },
      startFlow: {
        action: 'receive',
        channel: ref('channels/flowStart'),
        summary: 'Starts a flow of the pattern in the subject.',
        messages: [inChannel('flowStart', 'flowStartRequest')],
        reply: reply('flowStarted', 'errorAnswer'),
      },
      getFlow: {
        action: 'receive',
        channel: ref('channels/flowGet'),
        messages: [inChannel('flowGet', 'flowGetRequest')],
        reply: reply('flowGetAnswer', 'errorAnswer'),
      },
      cancelFlow: {
        action: 'receive',
        channel: ref('channels/flowCancel'),
        summary: 'Cancels a running flow; the daemon running it answers.',
        messages: [inChannel('flowCancel', 'flowCancelRequest')],
        reply: reply('flowStarted', 'errorAnswer'),
      },
      sendEvent: {
        action: 'receive',
        channel: ref('channels/flowSend'),
        summary: 'Checks an event against what the flow waits for, keeps it in its inbox, and answers once it is stored.',
        messages: [inChannel('flowSend', 'flowSendRequest')],
        reply: reply('flowSentAnswer', 'errorAnswer'),
      },
      keepEvent: { action: 'receive', channel: ref('channels/flowInbox'), messages: [inChannel('flowInbox', 'flowInboxEvent')] },
      announceStep: { action: 'send', channel: ref('channels/flowEvents'), messages: [inChannel('flowEvents', 'flowEvent')] },
      announceEnd: { action: 'send', channel: ref('channels/flowDone'), messages: [inChannel('flowDone', 'flowDone')] },
      reportRequestError: { action: 'send', channel: ref('channels/errors'), messages: [inChannel('errors', 'requestError')] },
      deadLetter: { action: 'send', channel: ref('channels/deadLetters'), messages: [inChannel('deadLetters', 'deadLetter')] },
    },
    components: {
      schemas: generated,
      securitySchemes: {
        natsUserPassword: { type: 'userPassword', description: 'NATS_USER and NATS_PASSWORD (or in NATS_URL).' },
        natsToken: { type: 'apiKey', in: 'user', description: 'NATS_TOKEN: a token the server checks (`authorization { token }`).' },
        natsCredentials: {
          type: 'asymmetricEncryption',
          description: 'NATS_CREDS (a JWT and nkey seed file) or NATS_NKEY_SEED: the server checks a signature of its nonce.',
        },
        natsTls: { type: 'X509', description: 'NATS_TLS_CERT and NATS_TLS_KEY: a client certificate, for servers that verify it (NATS_TLS_CA to trust the server).' },
      },
    },
  };
}

const pascal = (name: string) => name.replace(/(^|-)(\w)/g, (_, _dash: string, c: string) => c.toUpperCase());

/**
 * JSON Schemas (the draft 7 that AsyncAPI's schemas extend) for a registry's schemas, each
 * referring to the others under components.schemas. Input shapes: keys a schema does not
 * name are not refused (the daemon drops them; a client should ignore them too).
 */
function jsonSchemas(registry: z.core.$ZodRegistry<{ id: string }>): Record<string, unknown> {
  const { schemas } = z.toJSONSchema(registry, {
    target: 'draft-7',
    io: 'input',
    unrepresentable: 'any',
    uri: (id) => `#/components/schemas/${id}`,
  });
  return Object.fromEntries(
    Object.entries(schemas)
      .sort(([a], [b]) => a.localeCompare(b))
      .map(([id, { $schema: _schema, $id: _id, ...rest }]) => [id, rest]),
  );
}
