import type { ModelRequest } from '../../src/actors/model/ModelPort.js';
import type { ScriptedAnswer } from '../../src/actors/model/ScriptedModel.js';

/**
 * The answers of the offline cassette, written by hand (no model wrote them). Each is
 * picked by what the request asks for; `record.ts` runs the examples against these and
 * records the cassette the quickstart replays.
 */
export function handWrittenAnswer(request: ModelRequest<unknown>): ScriptedAnswer {
  if (request.system.startsWith('You summarize a text')) {
    return 'Microtasks are short model calls with a timeout, a fallback and a checked answer, in flows that save every step and resume without paying twice.';
  }
  throw new Error(`no hand-written answer for a request with system prompt "${request.system.slice(0, 60)}"`);
}
