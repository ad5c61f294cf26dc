import Anthropic, { APIError, APIConnectionError, APIConnectionTimeoutError, APIUserAbortError } from '@anthropic-ai/sdk';
import type { z } from 'zod';
import { addSecrets, displayUrl, scrubKnownSecrets, urlCredentials } from '../../secrets.js';
import { depthExceeds, MAX_ANSWER_DEPTH } from '../../jsonInput.js';
import { addUsage, zeroUsage, type Usage } from '../../contracts/usage.js';
import { abortedError, sleep } from './abort.js';
import { ModelError } from './ModelError.js';
import type { ModelPort, ModelRequest, ModelResponse } from './ModelPort.js';
import { answerJsonSchema, describeIssues, renderUserMessage } from './prompt.js';
import { traceModelCall } from '../../ops/tracing.js';

export interface AnthropicModelOptions {
  apiKey: string;
  /** Any Anthropic-compatible server; the SDK's default when unset. */
  baseURL?: string;
  model: string;
  /** Used when a request does not say. */
  maxTokens?: number;
  /** Retries of a rate-limited or unavailable call (429, 408, 409, 5xx, network). */
  maxRetries?: number;
  /**
   * The longest wait between two attempts. A retry-after above it is not waited for: the
   * call fails at once as `rate_limited` with the server's `retryAfterMs`, so the layer
   * above can schedule it (a worker) or fall back (a flow) instead of blocking a slot.
   */
  maxRetryWaitMs?: number;
  /** For tests: the backoff when the server gives no retry-after. */
  baseRetryDelayMs?: number;
}

type Message = Anthropic.Messages.Message;

/**
 * The HTTP timeout given to the SDK: the microtask's own deadline (at most 10 minutes, the
 * input schema's bound) aborts the call first. Given explicitly, because without it the SDK
 * refuses a non-streaming call whose max_tokens might take longer than 10 minutes to
 * generate (above about 21,000 tokens), which the input schema allows up to 128,000.
 */
const HTTP_TIMEOUT_MS = 600_000;
type MessageParam = Anthropic.Messages.MessageParam;

/**
 * The model port over @anthropic-ai/sdk.
 *
 * This class is the one layer that retries: the SDK client is built with `maxRetries: 0`
 * (its own retry honours any retry-after, without a cap) and the loop below retries
 * transient failures, honouring retry-after up to `maxRetryWaitMs`. The microtask actor
 * and the machines never retry a transient error themselves.
 */
export class AnthropicModel implements ModelPort {
  readonly name = 'anthropic';
  private readonly client: Anthropic;
  private readonly options: Required<Omit<AnthropicModelOptions, 'baseURL' | 'apiKey'>>;
  /** Why no call can work with this configuration, said at each call instead of sending it. */
  private readonly misconfigured: string | undefined;

  constructor(options: AnthropicModelOptions) {
    // Whatever a server quotes back (a 401 may echo the key) is scrubbed of these.
    const credentials = options.baseURL ? urlCredentials(options.baseURL) : {};
    addSecrets(options.apiKey, credentials.password ?? credentials.username);
    this.misconfigured =
      options.baseURL && (credentials.username !== undefined || credentials.password !== undefined)
        ? `the base URL ${displayUrl(options.baseURL)} (ANTHROPIC_BASE_URL) holds a user or password, which fetch refuses to send: remove them (the key goes in ANTHROPIC_API_KEY)`
        : undefined;
    this.client = new Anthropic({
      apiKey: options.apiKey,
      ...(options.baseURL ? { baseURL: options.baseURL } : {}),
      maxRetries: 0,
    });
    this.options = {
      model: options.model,
      maxTokens: options.maxTokens ?? 1024,
      maxRetries: options.maxRetries ?? 2,
      maxRetryWaitMs: options.maxRetryWaitMs ?? 30_000,
      baseRetryDelayMs: options.baseRetryDelayMs ?? 500,
    };
  }

  call<T = string>(request: ModelRequest<T>): Promise<ModelResponse<T>> {
    const model = request.model ?? this.options.model;
    const info = { model, maxTokens: request.maxTokens ?? this.options.maxTokens, system: request.system, prompt: request.prompt, data: request.data };
    return traceModelCall(info, () => this.untracedCall(request));
  }

  private async untracedCall<T>(request: ModelRequest<T>): Promise<ModelResponse<T>> {
    if (this.misconfigured) throw new ModelError('invalid_request', this.misconfigured);
    const messages: MessageParam[] = [{ role: 'user', content: renderUserMessage(request.prompt, request.data) }];
    if (!request.schema) {
      const message = await this.send(request, messages, undefined);
      const usage = usageOf(message);
      this.assertComplete(message, usage);
      const text = textOf(message);
      // No tool was offered, yet a model (or a gateway) may answer with one: that is no
      // answer to a text task, and it was paid for.
      if (text === '' && message.content.some((b) => b.type === 'tool_use')) {
        throw new ModelError('invalid_output', 'the model answered with a tool call and no text', {
          requestId: message._request_id ?? undefined,
          usage,
        });
      }
      return this.response(message, text as T, text, usage);
    }
    return this.callStructured(request, request.schema, messages);
  }

  /** Forced tool use; one repair attempt that sends the validation error back. */
  private async callStructured<T>(
    request: ModelRequest<T>,
    schema: z.ZodType<T>,
    messages: MessageParam[],
  ): Promise<ModelResponse<T>> {
    const toolName = request.schemaName ?? 'answer';
    const { inputSchema, unwrap } = answerJsonSchema(schema);
    const tool: Anthropic.Messages.Tool = {
      name: toolName,
      description: 'Give your answer by calling this tool with arguments that match its schema exactly.',
      input_schema: inputSchema as Anthropic.Messages.Tool.InputSchema,
    };
    let usage = zeroUsage();
    for (let attempt = 0; ; attempt++) {
      const message = await this.send(request, messages, tool);
      usage = addUsage(usage, usageOf(message));
      this.assertComplete(message, usage);
      const block = message.content.find(
        (b): b is Anthropic.Messages.ToolUseBlock => b.type === 'tool_use' && b.name === toolName,
      );
      const parsed = block ? schema.safeParse(unwrap(block.input)) : undefined;
      if (block && parsed?.success) {
        // JSON.stringify (here, and in every store the answer goes to) recurses: an answer
        // nested thousands deep would overflow the stack, failing as an internal error.
        if (depthExceeds(parsed.data, MAX_ANSWER_DEPTH)) {
          throw new ModelError('invalid_output', `the model's answer nests deeper than ${MAX_ANSWER_DEPTH} levels of arrays and objects (the limit)`, {
            requestId: message._request_id ?? undefined,
            usage,
          });
        }
        return this.response(message, parsed.data, JSON.stringify(parsed.data), usage);
      }
      const problem = parsed && !parsed.success
        ? `The arguments did not match the schema:\n${describeIssues(parsed.error)}`
        : `You did not call the \`${toolName}\` tool.`;
      if (attempt >= 1) {
        throw new ModelError('invalid_output', `the model's answer does not fit the schema after one repair. ${problem}`, {
          requestId: message._request_id ?? undefined,
          usage,
        });
      }
      // The repair: show the model its own answer and what is wrong with it.
      messages = [
        ...messages,
        { role: 'assistant', content: message.content as Anthropic.Messages.ContentBlockParam[] },
        block
          ? {
              role: 'user',
              content: [
                {
                  type: 'tool_result',
                  tool_use_id: block.id,
                  is_error: true,
                  content: `${problem}\nCall \`${toolName}\` again with corrected arguments.`,
                },
              ],
            }
          : { role: 'user', content: `${problem} Call it now with your answer.` },
      ];
    }
  }

  /** One HTTP call, with the retry loop this layer owns. */
  private async send(
    request: ModelRequest<unknown>,
    messages: MessageParam[],
    tool: Anthropic.Messages.Tool | undefined,
  ): Promise<Message & { _request_id?: string | null }> {
    for (let retry = 0; ; retry++) {
      try {
        return await this.client.messages.create(
          {
            model: request.model ?? this.options.model,
            max_tokens: request.maxTokens ?? this.options.maxTokens,
            system: request.system,
            messages,
            ...(tool ? { tools: [tool], tool_choice: { type: 'tool' as const, name: tool.name } } : {}),
          },
          { signal: request.signal ?? null, timeout: HTTP_TIMEOUT_MS },
        );
      } catch (e) {
        const error = toModelError(e, request.signal, request.model ?? this.options.model);
        if (!error.retryable || retry >= this.options.maxRetries) throw error;
        const wait = error.retryAfterMs ?? this.backoff(retry);
        if (wait > this.options.maxRetryWaitMs) {
          throw new ModelError(
            error.kind,
            `${error.message} (the server asked to wait ${Math.ceil(wait / 1000)} s, above the cap of ${Math.ceil(this.options.maxRetryWaitMs / 1000)} s)`,
            { status: error.status, requestId: error.requestId, retryAfterMs: error.retryAfterMs, cause: e },
          );
        }
        await sleep(wait, request.signal);
      }
    }
  }

  private backoff(retry: number): number {
    const exponential = Math.min(this.options.baseRetryDelayMs * 2 ** retry, 8_000);
    return exponential * (1 - Math.random() * 0.25);
  }

  private assertComplete(message: Message & { _request_id?: string | null }, usage: Usage): void {
    const requestId = message._request_id ?? undefined;
    if (message.stop_reason === 'max_tokens') {
      throw new ModelError('max_tokens', `the answer was cut off at max_tokens (${message.usage.output_tokens} tokens out)`, {
        requestId,
        usage,
      });
    }
    if (message.stop_reason === 'refusal') {
      throw new ModelError('refused', 'the model refused to answer', { requestId, usage });
    }
  }

  private response<T>(
    message: Message & { _request_id?: string | null },
    value: T,
    text: string,
    usage: Usage,
  ): ModelResponse<T> {
    // A gateway may echo the key it was sent into any of these; they are stored and published.
    return {
      value: scrubKnownSecrets(value),
      text: scrubKnownSecrets(text),
      usage,
      model: scrubKnownSecrets(message.model),
      stopReason: scrubKnownSecrets(message.stop_reason ?? 'unknown'),
      requestId: scrubKnownSecrets(message._request_id ?? undefined),
    };
  }
}

const textOf = (message: Message): string =>
  message.content
    .filter((b): b is Anthropic.Messages.TextBlock => b.type === 'text')
    .map((b) => b.text)
    .join('');

const usageOf = (message: Message): Usage => ({
  inputTokens: message.usage.input_tokens,
  outputTokens: message.usage.output_tokens,
  cacheCreationInputTokens: message.usage.cache_creation_input_tokens ?? 0,
  cacheReadInputTokens: message.usage.cache_read_input_tokens ?? 0,
  calls: 1,
});

/** Reads `retry-after-ms`, then `retry-after` (seconds or an HTTP date). */
export function retryAfterMs(headers: Headers | undefined, now = Date.now()): number | undefined {
  const ms = headers?.get('retry-after-ms');
  if (ms && Number.isFinite(Number(ms))) return Math.max(0, Number(ms));
  const after = headers?.get('retry-after');
  if (!after) return undefined;
  if (Number.isFinite(Number(after))) return Math.max(0, Number(after) * 1000);
  const date = Date.parse(after);
  return Number.isNaN(date) ? undefined : Math.max(0, date - now);
}

function toModelError(e: unknown, signal: AbortSignal | undefined, model: string): ModelError {
  if (e instanceof ModelError) return e;
  if (e instanceof APIUserAbortError || signal?.aborted) return abortedError(signal, e);
  if (e instanceof APIConnectionTimeoutError) return new ModelError('timeout', 'the HTTP request timed out', { cause: e });
  if (e instanceof APIConnectionError) {
    const why = e.cause instanceof Error && e.cause.message ? ` (${e.cause.message})` : '';
    return new ModelError('unavailable', `cannot reach the model server: ${e.message}${why}`, { cause: e });
  }
  if (e instanceof APIError) {
    const status = e.status ?? 0;
    const details = {
      status,
      requestId: e.requestID ?? undefined,
      retryAfterMs: retryAfterMs(e.headers as Headers | undefined),
      cause: e,
    };
    const what = `${status} ${e.type ?? ''}: ${e.apiMessage ?? e.message}`.replace(/\s+:/, ':');
    if (status === 429) return new ModelError('rate_limited', `rate limited (${what})`, details);
    if (status === 408 || status === 409 || status >= 500) {
      return new ModelError('unavailable', `the model server failed (${what})`, details);
    }
    if (status === 401 || status === 403) {
      return new ModelError('auth', `the API key was refused (${what}); check ANTHROPIC_API_KEY`, details);
    }
    // Anthropic says "no credit" as a 400 invalid_request_error ("Your credit balance is too
    // low to access the Anthropic API"); a 402 billing_error is its documented form.
    const apiMessage = e.apiMessage ?? e.message;
    if (status === 402 || e.type === 'billing_error' || /credit balance|purchase credits|insufficient credit/i.test(apiMessage)) {
      return new ModelError('billing', `the Anthropic account cannot pay for calls (${what}); add credit in the Anthropic Console (Plans & Billing), then run it again`, details);
    }
    if (status === 404 && e.type === 'not_found_error' && /\bmodel\b/i.test(apiMessage)) {
      return new ModelError('model_not_found', `the model ${model} was not found (${what}); check MICROTASK_MODEL or the model the task names`, details);
    }
    return new ModelError('invalid_request', `the request was rejected (${what})`, details);
  }
  const broken = connectionBroken(e);
  if (broken) return new ModelError('unavailable', `the connection to the model server broke: ${broken}`, { cause: e });
  return new ModelError('unknown', e instanceof Error ? e.message : String(e), { cause: e });
}

/** Codes of a connection that failed or broke, as Node and undici name them. */
const brokenConnectionCodes: ReadonlySet<string> = new Set([
  'UND_ERR_SOCKET',
  'UND_ERR_CLOSED',
  'UND_ERR_BODY_TIMEOUT',
  'UND_ERR_HEADERS_TIMEOUT',
  'UND_ERR_CONNECT_TIMEOUT',
  'ECONNRESET',
  'ECONNREFUSED',
  'ECONNABORTED',
  'EPIPE',
  'ETIMEDOUT',
]);

/**
 * Whether an error the SDK passed through unwrapped is a broken connection: a body cut
 * short mid-stream surfaces from `fetch` as `TypeError: terminated`, caused by undici's
 * `SocketError: other side closed` (UND_ERR_SOCKET). Transient, like a reset. Returns the
 * chain of messages, or undefined.
 */
function connectionBroken(e: unknown): string | undefined {
  const messages: string[] = [];
  let broken = false;
  for (let current: unknown = e, depth = 0; current instanceof Error && depth < 5; current = current.cause, depth++) {
    const code = (current as { code?: unknown }).code;
    if ((typeof code === 'string' && brokenConnectionCodes.has(code)) || /^(terminated|other side closed)$/i.test(current.message)) {
      broken = true;
    }
    messages.push(typeof code === 'string' ? `${current.message} [${code}]` : current.message);
  }
  return broken ? messages.join(': ') : undefined;
}
