import { afterEach, describe, expect, it } from 'vitest';
import { createActor, toPromise } from 'xstate';
import { AnthropicModel } from '../src/actors/model/AnthropicModel.js';
import { createMicrotaskLogic, MicrotaskRunner } from '../src/actors/microtask.js';
import { MemoryResultsStore } from '../src/actors/ResultsStore.js';
import { FlowStopError } from '../src/contracts/flowStop.js';
import { reply, startFakeAnthropic, type FakeAnthropic, type FakeReply } from '../src/testing/fakeAnthropic.js';

// Issue 16, item 3: which failures stop a flow (a refused key, no credit, an unknown model)
// and which still fall back (any other bad request).

let server: FakeAnthropic | undefined;
afterEach(async () => {
  await server?.close();
  server = undefined;
});

async function runnerAnswering(answer: FakeReply) {
  server = await startFakeAnthropic({ replies: () => answer });
  const results = new MemoryResultsStore();
  const model = new AnthropicModel({ apiKey: 'sk-ant-secret-key-0123456789', baseURL: server.url, model: 'claude-nope', baseRetryDelayMs: 10 });
  return { runner: new MicrotaskRunner({ model, results }), results };
}

const input = (n: number) => ({ taskType: 'summarize', key: `flow-1/summarize/${n}`, system: 's', prompt: 'p' });

const classified: Array<[string, FakeReply, string, string | undefined]> = [
  ['401', reply.error(401, 'authentication_error', 'invalid x-api-key'), 'auth', 'MODEL_AUTH'],
  ['403', reply.error(403, 'permission_error', 'Your API key does not have permission to use the specified resource.'), 'auth', 'MODEL_AUTH'],
  ['400 credit', reply.error(400, 'invalid_request_error', 'Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing to upgrade or purchase credits.'), 'billing', 'MODEL_BILLING'],
  ['402', reply.error(402, 'billing_error', 'There is an issue with your billing.'), 'billing', 'MODEL_BILLING'],
  ['404 model', reply.error(404, 'not_found_error', 'model: claude-nope'), 'model_not_found', 'MODEL_NOT_FOUND'],
  // Not a cause every call shares: the flow falls back, as before.
  ['404 other', reply.error(404, 'not_found_error', 'Not found'), 'invalid_request', undefined],
  ['400 other', reply.error(400, 'invalid_request_error', 'max_tokens: too large'), 'invalid_request', undefined],
];

describe('failures no fallback helps', () => {
  for (const [name, answer, kind, code] of classified) {
    it(`${name}: kind ${kind}, ${code ? `the actor rejects with ${code}` : 'the actor resolves a failed result (fallback)'}; one request, nothing stored`, async () => {
      const { runner, results } = await runnerAnswering(answer);
      const result = await runner.run(input(0));
      expect(result).toMatchObject({ success: false, error: { kind, retryable: false } });
      expect(server!.requests).toHaveLength(1);
      // No answer was paid for: once a person fixes the cause, the same key calls the model.
      expect(await results.get(input(0).key)).toBeUndefined();

      const actor = createActor(createMicrotaskLogic(runner), { input: input(1) });
      actor.start();
      const settled = await toPromise(actor).then(
        (r) => ({ resolved: r }),
        (e: unknown) => ({ rejected: e }),
      );
      if (!code) {
        expect(settled).toMatchObject({ resolved: { success: false, error: { kind } } });
        return;
      }
      const error = (settled as { rejected?: unknown }).rejected;
      expect(error).toBeInstanceOf(FlowStopError);
      expect((error as FlowStopError).code).toBe(code);
      expect((error as FlowStopError).message).not.toMatch(/not tried|\n/);
      expect((error as FlowStopError).message).not.toContain('sk-ant-secret');
    });
  }

  it('a refused key: later calls of the runner fail fast with the same cause, no request sent, and still stop their flow', async () => {
    const { runner } = await runnerAnswering(reply.error(401, 'authentication_error', 'invalid x-api-key'));
    await runner.run(input(0));
    const actor = createActor(createMicrotaskLogic(runner), { input: input(1) });
    actor.start();
    const error = await toPromise(actor).catch((e: unknown) => e);
    expect(error).toMatchObject({ name: 'FlowStopError', code: 'MODEL_AUTH', message: 'the API key was refused (401 authentication_error: invalid x-api-key); check ANTHROPIC_API_KEY' });
    expect(server!.requests).toHaveLength(1);
  });
});
