import { handWrittenAnswer } from '../../examples/offline/answers.js';
import type { ModelRequest } from '../../src/actors/model/ModelPort.js';
import { ModelError } from '../../src/actors/model/ModelError.js';
import { reply, type FakeRequest, type Responder } from '../../src/testing/fakeAnthropic.js';

/**
 * A fake Anthropic server's responder that answers as the offline cassette does (the
 * hand-written answers), over HTTP, each after `delayMs`: the real SDK path, for tests
 * that run the CLI or the daemon as processes.
 */
export function handWrittenReplies(delayMs = 60): Responder {
  return (request: FakeRequest) => {
    const user = request.lastUserText;
    const at = user.indexOf('\n\n<data>\n');
    const modelRequest: ModelRequest<unknown> = {
      system: String(request.body.system ?? ''),
      prompt: at < 0 ? user : user.slice(0, at),
      ...(at < 0 ? {} : { data: JSON.parse(user.slice(at + 9, user.lastIndexOf('\n</data>'))) }),
      ...(request.body.tools?.[0] ? { schemaName: request.body.tools[0].name } : {}),
    };
    const answered = handWrittenAnswer(modelRequest);
    if (typeof answered === 'string') return reply.text(answered, { delayMs });
    if (answered instanceof ModelError || 'error' in answered) throw new Error('the hand-written answers have no errors');
    if ('value' in answered) return reply.tool(modelRequest.schemaName ?? 'answer', answered.value, { delayMs });
    return reply.text(answered.text, { delayMs });
  };
}
