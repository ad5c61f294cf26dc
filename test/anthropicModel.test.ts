import { afterEach, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { AnthropicModel, type AnthropicModelOptions } from '../src/actors/model/AnthropicModel.js';
import { MicrotaskRunner } from '../src/actors/microtask.js';
import { ModelError } from '../src/actors/model/ModelError.js';
import { MemoryResultsStore } from '../src/actors/ResultsStore.js';
import { reply, startFakeAnthropic, type FakeAnthropic, type FakeReply, type Responder } from '../src/testing/fakeAnthropic.js';

const Verdict = z.object({ score: z.number().min(0).max(1), feedback: z.string() });

let server: FakeAnthropic | undefined;
afterEach(async () => {
  await server?.close();
  server = undefined;
});

async function modelFor(replies: FakeReply[] | Responder, options: Partial<AnthropicModelOptions> = {}) {
  server = await startFakeAnthropic({ replies, apiKey: 'test-key' });
  return new AnthropicModel({ apiKey: 'test-key', baseURL: server.url, model: 'claude-test', baseRetryDelayMs: 10, ...options });
}

async function failure(promise: Promise<unknown>): Promise<ModelError> {
  const error = await promise.then(
    () => {
      throw new Error('expected the call to fail');
    },
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(ModelError);
  return error as ModelError;
}

describe('AnthropicModel over the real SDK and HTTP', () => {
  it('answers plain text with usage, model, stop reason and request id', async () => {
    const model = await modelFor([reply.text('Paris', { usage: { input_tokens: 12, output_tokens: 3, cache_read_input_tokens: 5 } })]);
    const answer = await model.call({ system: 'Answer in one word.', prompt: 'Capital of France?', data: { hint: 'city' } });
    expect(answer).toMatchObject({
      value: 'Paris',
      text: 'Paris',
      model: 'claude-test',
      stopReason: 'end_turn',
      requestId: 'req_fake_0',
      usage: { inputTokens: 12, outputTokens: 3, cacheReadInputTokens: 5, cacheCreationInputTokens: 0, calls: 1 },
    });
    const sent = server!.requests[0]!.body;
    expect(sent.system).toBe('Answer in one word.');
    expect(sent.tools).toBeUndefined();
    expect(server!.requests[0]!.lastUserText).toContain('"hint": "city"');
  });

  it('forces tool use with the schema as JSON Schema and validates the answer', async () => {
    const model = await modelFor([reply.tool('verdict', { score: 0.8, feedback: 'clear' })]);
    const answer = await model.call({ system: 's', prompt: 'rate it', schema: Verdict, schemaName: 'verdict' });
    expect(answer.value).toEqual({ score: 0.8, feedback: 'clear' });
    const sent = server!.requests[0]!.body;
    expect(sent.tool_choice).toEqual({ type: 'tool', name: 'verdict' });
    expect(sent.tools![0]!.input_schema).toMatchObject({
      type: 'object',
      properties: { score: { type: 'number', minimum: 0, maximum: 1 }, feedback: { type: 'string' } },
      required: ['score', 'feedback'],
    });
  });

  it('wraps a schema that is not an object, and unwraps the answer', async () => {
    const model = await modelFor([reply.tool('answer', { value: ['a', 'b'] })]);
    const answer = await model.call({ system: 's', prompt: 'list', schema: z.array(z.string()) });
    expect(answer.value).toEqual(['a', 'b']);
    expect(server!.requests[0]!.body.tools![0]!.input_schema).toMatchObject({ type: 'object', required: ['value'] });
  });

  it('waits out a 429 retry-after, then succeeds', async () => {
    const model = await modelFor([reply.rateLimited(1), reply.text('ok')]);
    const started = performance.now();
    const answer = await model.call({ system: 's', prompt: 'p' });
    expect(answer.value).toBe('ok');
    expect(server!.requests).toHaveLength(2);
    // retry-after: 1 means one second; the backoff alone would be 10 ms.
    expect(performance.now() - started).toBeGreaterThanOrEqual(950);
  });

  it('does not wait out a retry-after above the cap: rate_limited at once, with the wait asked', async () => {
    const model = await modelFor([reply.rateLimited(120), reply.text('too late')], { maxRetryWaitMs: 2_000 });
    const error = await failure(model.call({ system: 's', prompt: 'p' }));
    expect(error.kind).toBe('rate_limited');
    expect(error.retryable).toBe(true);
    expect(error.retryAfterMs).toBe(120_000);
    expect(server!.requests).toHaveLength(1);
  });

  it('gives up after a run of 500s: one call plus maxRetries, then unavailable', async () => {
    const model = await modelFor(() => reply.error(500, 'api_error', 'boom'), { maxRetries: 2 });
    const error = await failure(model.call({ system: 's', prompt: 'p' }));
    expect(error).toMatchObject({ kind: 'unavailable', status: 500, retryable: true });
    expect(error.message).toContain('boom');
    expect(server!.requests).toHaveLength(3);
  });

  it('does not retry a 401: auth, with a hint at the key', async () => {
    server = await startFakeAnthropic({ replies: [reply.text('never')], apiKey: 'right' });
    const model = new AnthropicModel({ apiKey: 'wrong', baseURL: server.url, model: 'm', baseRetryDelayMs: 10 });
    const error = await failure(model.call({ system: 's', prompt: 'p' }));
    expect(error.kind).toBe('auth');
    expect(error.message).toContain('ANTHROPIC_API_KEY');
    expect(server.requests).toHaveLength(0);
  });

  it('cancels the HTTP request when the answer is slower than the timeout', async () => {
    const model = await modelFor([reply.text('slow', { delayMs: 5_000 })]);
    const started = performance.now();
    const error = await failure(model.call({ system: 's', prompt: 'p', signal: AbortSignal.timeout(300) }));
    expect(error.kind).toBe('timeout');
    expect(performance.now() - started).toBeLessThan(4_000);
    // The server saw the connection closed: the request was cancelled, not abandoned.
    await server!.waitForClosedEarly(1);
    expect(server!.requests[0]!.closedEarly).toBe(true);
  });

  it('repairs invalid tool input once by sending the validation error back', async () => {
    const model = await modelFor([
      reply.tool('answer', { score: 'high', feedback: 'ok' }, { usage: { input_tokens: 10, output_tokens: 4 } }),
      reply.tool('answer', { score: 0.9, feedback: 'ok' }, { usage: { input_tokens: 20, output_tokens: 4 } }),
    ]);
    const answer = await model.call({ system: 's', prompt: 'rate', schema: Verdict });
    expect(answer.value).toEqual({ score: 0.9, feedback: 'ok' });
    expect(answer.usage).toMatchObject({ inputTokens: 30, outputTokens: 8, calls: 2 });
    const repair = server!.requests[1]!.body.messages;
    expect(repair.map((m) => m.role)).toEqual(['user', 'assistant', 'user']);
    expect(repair[2]!.content).toMatchObject([{ type: 'tool_result', is_error: true }]);
    expect(server!.requests[1]!.lastUserText).toMatch(/score: .*number/i);
  });

  it('fails as invalid_output when the repair is invalid too', async () => {
    const model = await modelFor(() => reply.tool('answer', { score: 7 }));
    const error = await failure(model.call({ system: 's', prompt: 'rate', schema: Verdict }));
    expect(error.kind).toBe('invalid_output');
    expect(error.retryable).toBe(false);
    expect(server!.requests).toHaveLength(2);
  });

  it('treats a max_tokens stop as a failure, not an answer', async () => {
    const model = await modelFor([reply.text('The answer is', { stopReason: 'max_tokens' })]);
    const error = await failure(model.call({ system: 's', prompt: 'p', maxTokens: 3 }));
    expect(error.kind).toBe('max_tokens');
    expect(server!.requests[0]!.body.max_tokens).toBe(3);
  });

  it('treats a refusal as a failure', async () => {
    const model = await modelFor([reply.text('', { stopReason: 'refusal' })]);
    expect((await failure(model.call({ system: 's', prompt: 'p' }))).kind).toBe('refused');
  });

  it('says when the server cannot be reached', async () => {
    const model = new AnthropicModel({ apiKey: 'k', baseURL: 'http://127.0.0.1:9', model: 'm', maxRetries: 1, baseRetryDelayMs: 10 });
    const error = await failure(model.call({ system: 's', prompt: 'p' }));
    expect(error.kind).toBe('unavailable');
  });

  // Issue 11: a body cut short mid-stream is a network failure like a reset, not `unknown`.
  it('retries a response whose body was cut short (terminated), then succeeds', async () => {
    const model = await modelFor([reply.text('a long enough answer to be cut', { cutAfterBytes: 40 }), reply.text('whole')]);
    const answer = await model.call({ system: 's', prompt: 'p' });
    expect(answer.value).toBe('whole');
    expect(server!.requests).toHaveLength(2);
  });

  it('classifies a body cut short as unavailable, retryable, when no retry is left', async () => {
    const model = await modelFor(() => reply.text('a long enough answer to be cut', { cutAfterBytes: 40 }), { maxRetries: 0 });
    const error = await failure(model.call({ system: 's', prompt: 'p' }));
    expect(error).toMatchObject({ kind: 'unavailable', retryable: true });
    expect(error.message).toMatch(/cut short|terminated|closed/);
  });

  // Issue 11: a text task answered only by a tool call was `done` with "".
  it('fails a text task answered by a tool call and no text as invalid_output, with its usage', async () => {
    const model = await modelFor([reply.tool('search', { q: 'x' }, { usage: { input_tokens: 9, output_tokens: 5 } })]);
    const error = await failure(model.call({ system: 's', prompt: 'p' }));
    expect(error).toMatchObject({ kind: 'invalid_output', retryable: false, usage: { inputTokens: 9, outputTokens: 5, calls: 1 } });
    expect(error.message).toBe('the model answered with a tool call and no text');
  });

  it('stores that failure like any paid one: a rerun of the key does not call again', async () => {
    const model = await modelFor([reply.tool('search', { q: 'x' }), reply.text('never asked')]);
    const runner = new MicrotaskRunner({ model, results: new MemoryResultsStore() });
    const input = { taskType: 'summarize', key: 'flow-t/summarize/0', system: 's', prompt: 'p' };
    expect(await runner.run(input)).toMatchObject({ success: false, error: { kind: 'invalid_output' } });
    expect(await runner.run(input)).toMatchObject({ success: false, cached: true, error: { kind: 'invalid_output' } });
    expect(server!.requests).toHaveLength(1);
  });

  // Issue 11: the SDK refuses a non-streaming call whose max_tokens could take over 10 minutes
  // (above ~21,333 tokens), as an odd `unknown` failure; the microtask's deadline bounds the call instead.
  it('sends the largest maxTokens the input schema accepts', async () => {
    const model = await modelFor([reply.text('ok')]);
    expect((await model.call({ system: 's', prompt: 'p', maxTokens: 128_000 })).value).toBe('ok');
    expect(server!.requests[0]!.body.max_tokens).toBe(128_000);
  });
});
