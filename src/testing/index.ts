/** Test utilities: a local Anthropic-compatible server and a real nats-server on a free port. */
export { reply, startFakeAnthropic } from './fakeAnthropic.js';
export type { FakeAnthropic, FakeAnthropicOptions, FakeReply, FakeRequest, MessageReply, ErrorReply, Responder } from './fakeAnthropic.js';
export { findNatsServer, freePort, NatsServerMissingError, startNatsServer } from './natsServer.js';
export type { NatsServer } from './natsServer.js';
export { ScriptedModel } from '../actors/model/ScriptedModel.js';
export type { Script, ScriptedAnswer } from '../actors/model/ScriptedModel.js';
