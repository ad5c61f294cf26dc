import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { MicrotaskRunner } from '../src/actors/microtask.js';
import { AnthropicModel } from '../src/actors/model/AnthropicModel.js';
import { ModelError } from '../src/actors/model/ModelError.js';
import { MemoryResultsStore } from '../src/actors/ResultsStore.js';
import { loadConfig } from '../src/config.js';
import { createLogger } from '../src/log.js';
import { chooseModel } from '../src/runtime.js';
import { addSecrets, displayUrl, scrubSecrets } from '../src/secrets.js';
import { reply, startFakeAnthropic } from '../src/testing/fakeAnthropic.js';

/** A pino destination that keeps every line written. */
function captured() {
  const lines: string[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _encoding, done) {
      lines.push(chunk.toString('utf8'));
      done();
    },
  });
  return { lines, stream, text: () => lines.join('') };
}

const task = { taskType: 'summarize', key: 'flow-s/summarize/0', system: 'Summarize.', prompt: 'Summarize.' };

describe('secrets never reach a stored or logged text (issue 11)', () => {
  it('scrubs registered secrets as written, JSON-escaped and URL-encoded, and anything shaped like a key', () => {
    addSecrets('gateway-pass"word/42');
    expect(scrubSecrets('login with gateway-pass"word/42 failed')).toBe('login with [redacted] failed');
    expect(scrubSecrets(JSON.stringify({ m: 'gateway-pass"word/42' }))).toBe('{"m":"[redacted]"}');
    expect(scrubSecrets(`https://u:${encodeURIComponent('gateway-pass"word/42')}@h/`)).toBe('https://u:[redacted]@h/');
    // Unregistered, but shaped like a credential.
    expect(scrubSecrets('key sk-ant-api03-AbC_d-9 refused')).toBe('key [redacted] refused');
    expect(scrubSecrets('Authorization: Bearer eyJhbGciOi.J9x-y_z')).toBe('Authorization: Bearer [redacted]');
    expect(scrubSecrets('{"x-api-key":"k3y-of-someone"}')).toBe('{"x-api-key":"[redacted]"}');
    expect(scrubSecrets('cannot reach http://bob:hunter2@proxy:8080/v1')).toBe('cannot reach http://bob:[redacted]@proxy:8080/v1');
    // Prose is left alone; a short value is not scrubbed by value.
    expect(scrubSecrets('Bearer authentication is required.')).toBe('Bearer authentication is required.');
    addSecrets('abc');
    expect(scrubSecrets('abc')).toBe('abc');
  });

  it('takes linear time on hostile text: a long run of letters before :// does not stall the process', () => {
    // Every log line and error message goes through it, and a server or a model writes them:
    // the URL shape tried a scheme from every letter of a run, 40 KB took a second, 1 MB hours.
    const texts = ['a'.repeat(80_000) + '://u:p', `Bearer ${'a'.repeat(80_000)}`, `${'1a'.repeat(40_000)}://x`];
    scrubSecrets('warm-up');
    const started = performance.now();
    for (const text of texts) expect(scrubSecrets(text)).toBe(text);
    expect(performance.now() - started, 'ms').toBeLessThan(200);
    // The scheme may follow any character still, and its password goes.
    expect(scrubSecrets('see(https://bob:hunter2@proxy/)')).toBe('see(https://bob:[redacted]@proxy/)');
    expect(scrubSecrets('x9nats://bob:hunter2@h')).toBe('x9nats://bob:[redacted]@h');
  });

  it('a 401 echoing the key: not in the ModelError, the run result, the results store or the log', async () => {
    const apiKey = 'gw-key-7f3a9c21e5'; // not shaped like an Anthropic key: scrubbed because it is the configured one
    // The SDK sends the key as `Authorization: Bearer <key>`; this server quotes it back, and the bare key too.
    await using server = await startFakeAnthropic({
      replies: (request) => {
        const sent = String(request.headers.authorization ?? request.headers['x-api-key']);
        return reply.error(401, 'authentication_error', `invalid credentials: ${sent} (key ${sent.replace(/^Bearer /, '')} unknown)`);
      },
    });
    const model = new AnthropicModel({ apiKey, baseURL: server.url, model: 'm' });
    const direct = await model.call({ system: 's', prompt: 'p' }).catch((e: unknown) => e as ModelError);
    expect(direct).toBeInstanceOf(ModelError);
    expect((direct as ModelError).kind).toBe('auth');
    expect((direct as ModelError).message).toContain('invalid credentials: Bearer [redacted] (key [redacted] unknown)');
    expect((direct as ModelError).message).not.toContain(apiKey);

    const log = captured();
    const results = new MemoryResultsStore();
    const runner = new MicrotaskRunner({ model, results, logger: createLogger('debug', log.stream) });
    const result = await runner.run(task);
    const afterBreaker = await runner.run({ ...task, key: 'flow-s/summarize/1' });
    expect(result.error?.kind).toBe('auth');
    expect(afterBreaker.error?.message).toMatch(/^not tried: /);
    // The result as returned is what a worker stores and announces and a flow keeps in its snapshot.
    const everything = JSON.stringify([result, afterBreaker, await results.get(task.key)]) + log.text();
    expect(log.text()).toContain('microtask failed');
    expect(everything).toContain('[redacted]');
    expect(everything).not.toContain(apiKey);
  });

  it("a server that echoes the key in an answer: not in the answer, its model, its request id or the results store", async () => {
    const apiKey = 'gw-key-echoed-5b8d2e'; // the configured key, in no shape of a key
    // A gateway puts what it was sent into the answer, the model's name and the request id.
    await using server = await startFakeAnthropic({
      replies: (request) => {
        const sent = String(request.headers.authorization ?? request.headers['x-api-key']).replace(/^Bearer /, '');
        const options = { model: `m-${sent}`, headers: { 'request-id': `req-${sent}` } };
        const tool = request.body.tools?.[0]?.name;
        if (request.lastUserText.includes('fail')) return reply.error(400, 'invalid_request_error', 'no', { headers: options.headers });
        return tool ? reply.tool(tool, { score: 1, feedback: `you sent ${sent}`, [sent]: sent }, options) : reply.text(`your key is ${sent}.`, options);
      },
    });
    const results = new MemoryResultsStore();
    const model = new AnthropicModel({ apiKey, baseURL: server.url, model: 'm' });
    const runner = new MicrotaskRunner({ model, results, answers: { verdict: z.object({ score: z.number(), feedback: z.string() }).loose() } });
    const text = await runner.run({ taskType: 't', key: 'echo/text', system: 's', prompt: 'p' });
    const verdict = await runner.run({ taskType: 't', key: 'echo/verdict', system: 's', prompt: 'p', answer: 'verdict' });
    const failed = await runner.run({ taskType: 't', key: 'echo/failed', system: 's', prompt: 'fail' });
    expect(text).toMatchObject({ success: true, result: 'your key is [redacted].', model: 'm-[redacted]', requestId: 'req-[redacted]' });
    expect(failed).toMatchObject({ success: false, error: { kind: 'invalid_request', requestId: 'req-[redacted]' } });
    expect(JSON.stringify(failed)).not.toContain(apiKey);
    expect(verdict).toMatchObject({ success: true, result: { score: 1, feedback: 'you sent [redacted]', '[redacted]': '[redacted]' } });
    for (const stored of [text, verdict, await results.get('echo/text'), await results.get('echo/verdict')]) expect(JSON.stringify(stored)).not.toContain(apiKey);
  });

  it('the logger scrubs any line: a message, an error object, a nested field', () => {
    addSecrets('nats-pw-5521aa');
    const log = captured();
    const logger = createLogger('info', log.stream).child({ taskId: 't' });
    logger.error({ err: new Error('auth failed for nats-pw-5521aa'), detail: { header: 'Bearer sk-ant-api03-zzz9' } }, 'token nats-pw-5521aa rejected');
    expect(log.text()).toContain('rejected');
    expect(log.text()).not.toContain('nats-pw-5521aa');
    expect(log.text()).not.toContain('sk-ant-api03-zzz9');
  });

  it('the configured secrets are registered when the configuration is loaded', () => {
    loadConfig({ NATS_URL: 'nats://127.0.0.1:4222', NATS_PASSWORD: 'pw-from-config-9931', ANTHROPIC_BASE_URL: 'https://gw:urlsecret-55@gw.example/' });
    expect(scrubSecrets('nats said pw-from-config-9931; gateway said urlsecret-55')).toBe('nats said [redacted]; gateway said [redacted]');
  });
});

describe('a password in ANTHROPIC_BASE_URL (issue 11)', () => {
  it('is never printed: the model line shows user:***@', async () => {
    expect(displayUrl('https://user:secret@host/v1')).toBe('https://user:***@host/v1');
    expect(displayUrl('https://tok3n@host/')).toBe('https://***@host/');
    expect(displayUrl('http://127.0.0.1:8080')).toBe('http://127.0.0.1:8080');
    const config = loadConfig({ ANTHROPIC_API_KEY: 'sk-ant-test', ANTHROPIC_BASE_URL: 'https://user:s3cret-pass@gateway.example/' });
    const { description } = await chooseModel(config);
    expect(description).toContain('at https://user:***@gateway.example/');
    expect(description).not.toContain('s3cret-pass');
  });

  it('is refused before any request, with a message that says what to do and no password', async () => {
    await using server = await startFakeAnthropic({ replies: [reply.text('never')] });
    const model = new AnthropicModel({ apiKey: 'k', baseURL: server.url.replace('http://', 'http://gw:p%40ss-77@'), model: 'm' });
    const error = (await model.call({ system: 's', prompt: 'p' }).catch((e: unknown) => e)) as ModelError;
    // fetch refuses a URL with credentials; before, that was "Connection error.", unavailable, retried.
    expect(error).toBeInstanceOf(ModelError);
    expect(error).toMatchObject({ kind: 'invalid_request', retryable: false });
    expect(error.message).toContain('ANTHROPIC_BASE_URL');
    expect(error.message).not.toMatch(/p%40ss-77|p@ss-77/);
    expect(server.requests).toHaveLength(0);
  });
});
