import { createServer, type IncomingHttpHeaders, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

/**
 * A local Anthropic-compatible Messages API server (`POST /v1/messages`), for testing
 * flows through the real SDK over HTTP without spending tokens. Point the SDK at it
 * with `ANTHROPIC_BASE_URL=server.url`.
 *
 *   await using server = await startFakeAnthropic({ replies: [reply.text('hi')] });
 */

export interface FakeRequest {
  /** 0 for the first request the server received. */
  index: number;
  body: {
    model: string;
    max_tokens: number;
    system?: unknown;
    messages: Array<{ role: string; content: unknown }>;
    tools?: Array<{ name: string; input_schema: unknown }>;
    tool_choice?: { type: string; name?: string };
    [key: string]: unknown;
  };
  headers: IncomingHttpHeaders;
  /** True when the client closed the connection before the answer was written. */
  closedEarly: boolean;
  /** When the request arrived and when its answer was written (Date.now()). */
  receivedAt: number;
  answeredAt?: number;
  /** The user text of the last message, for responders that match on the prompt. */
  lastUserText: string;
}

interface ReplyCommon {
  /** Wait this long before answering (the client may give up first). */
  delayMs?: number;
  headers?: Record<string, string>;
  /**
   * Send the status, the headers and only this many bytes of the body, then destroy the
   * connection: a response cut short mid-stream (a proxy or the server dying), which the
   * client sees as `terminated` while reading the body.
   */
  cutAfterBytes?: number;
}
export interface MessageReply extends ReplyCommon {
  content: Array<Record<string, unknown>>;
  stopReason?: string;
  usage?: Partial<{
    input_tokens: number;
    output_tokens: number;
    cache_creation_input_tokens: number;
    cache_read_input_tokens: number;
  }>;
  model?: string;
}
export interface ErrorReply extends ReplyCommon {
  status: number;
  error: { type: string; message: string };
}
export type FakeReply = MessageReply | ErrorReply;
export type Responder = (request: FakeRequest) => FakeReply | Promise<FakeReply>;

export const reply = {
  text: (text: string, options: Omit<MessageReply, 'content'> = {}): MessageReply => ({
    content: [{ type: 'text', text }],
    stopReason: 'end_turn',
    ...options,
  }),
  /** A tool_use answer, as a model forced to call `name` gives. */
  tool: (name: string, input: unknown, options: Omit<MessageReply, 'content'> = {}): MessageReply => ({
    content: [{ type: 'tool_use', id: `toolu_fake_${Math.random().toString(36).slice(2, 10)}`, name, input }],
    stopReason: 'tool_use',
    ...options,
  }),
  error: (status: number, type: string, message: string, options: ReplyCommon = {}): ErrorReply => ({
    status,
    error: { type, message },
    ...options,
  }),
  rateLimited: (retryAfterSeconds: number, options: ReplyCommon = {}): ErrorReply => ({
    status: 429,
    error: { type: 'rate_limit_error', message: 'Number of requests has exceeded your rate limit' },
    ...options,
    headers: { 'retry-after': String(retryAfterSeconds), ...options.headers },
  }),
  overloaded: (options: ReplyCommon = {}): ErrorReply => ({
    status: 529,
    error: { type: 'overloaded_error', message: 'Overloaded' },
    ...options,
  }),
};

export interface FakeAnthropic extends AsyncDisposable {
  /** The base URL to give the SDK (`ANTHROPIC_BASE_URL`). */
  readonly url: string;
  /** Every request received, in order. */
  readonly requests: FakeRequest[];
  /** Requests whose client hung up before the answer. */
  closedEarly(): number;
  /** Resolves when `n` requests have been closed early by their client. */
  waitForClosedEarly(n: number, timeoutMs?: number): Promise<void>;
  close(): Promise<void>;
}

export interface FakeAnthropicOptions {
  /** Answers in order, or a function of the request. Past the last one: a 500 that says so. */
  replies?: FakeReply[] | Responder;
  /** The API key the server accepts; any non-empty key when unset. */
  apiKey?: string;
  port?: number;
}

const isError = (r: FakeReply): r is ErrorReply => 'status' in r;
const estimateTokens = (value: unknown) => Math.max(1, Math.ceil(JSON.stringify(value ?? '').length / 4));

export async function startFakeAnthropic(options: FakeAnthropicOptions = {}): Promise<FakeAnthropic> {
  const requests: FakeRequest[] = [];
  // Responses the server itself cut short: their closing is not the client hanging up.
  const cutShort = new WeakSet<ServerResponse>();
  const closeWaiters: Array<() => void> = [];
  const replies = options.replies ?? [];
  const respond: Responder = Array.isArray(replies)
    ? (request) =>
        replies[request.index] ??
        reply.error(500, 'api_error', `fake server: no reply scripted for request #${request.index}`)
    : replies;

  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => chunks.push(chunk));
    req.on('end', () => {
      void handle(req.method ?? '', req.url ?? '', req.headers, Buffer.concat(chunks).toString('utf8'), res);
    });
  });
  // Keep-alive sockets would hold close() open; tests open and close many servers.
  server.keepAliveTimeout = 1;

  async function handle(method: string, url: string, headers: IncomingHttpHeaders, raw: string, res: ServerResponse) {
    if (method !== 'POST' || !url.startsWith('/v1/messages')) {
      return send(res, reply.error(404, 'not_found_error', `fake server: no route ${method} ${url}`));
    }
    // The SDK sends the key as `x-api-key` or, in newer versions, `Authorization: Bearer`.
    const key = headers['x-api-key'] ?? headers.authorization?.replace(/^Bearer\s+/i, '');
    if (!key || (options.apiKey !== undefined && key !== options.apiKey)) {
      return send(res, reply.error(401, 'authentication_error', 'invalid API key'));
    }
    let body: FakeRequest['body'];
    try {
      body = JSON.parse(raw) as FakeRequest['body'];
    } catch {
      return send(res, reply.error(400, 'invalid_request_error', 'body is not JSON'));
    }
    if (typeof body?.model !== 'string' || typeof body.max_tokens !== 'number' || !Array.isArray(body.messages) || body.messages.length === 0) {
      return send(res, reply.error(400, 'invalid_request_error', 'model, max_tokens and messages are required'));
    }
    const request: FakeRequest = {
      index: requests.length,
      body,
      headers,
      closedEarly: false,
      receivedAt: Date.now(),
      lastUserText: lastUserText(body.messages),
    };
    requests.push(request);
    res.on('close', () => {
      if (!res.writableFinished && !cutShort.has(res)) {
        request.closedEarly = true;
        closeWaiters.splice(0).forEach((wake) => wake());
      }
    });
    let answer: FakeReply;
    try {
      answer = await respond(request);
    } catch (e) {
      answer = reply.error(500, 'api_error', `fake server: responder threw: ${(e as Error).message}`);
    }
    if (answer.delayMs) await new Promise((r) => setTimeout(r, answer.delayMs));
    if (res.destroyed || request.closedEarly) return;
    send(res, answer, request);
    request.answeredAt = Date.now();
  }

  function send(res: ServerResponse, answer: FakeReply, request?: FakeRequest) {
    const requestId = `req_fake_${request?.index ?? 'x'}`;
    const headers = { 'content-type': 'application/json', 'request-id': requestId, ...answer.headers };
    const write = (status: number, payload: string) => {
      if (answer.cutAfterBytes === undefined) {
        res.writeHead(status, headers).end(payload);
        return;
      }
      // The full length is announced, so the client knows the body it got was cut short.
      const bytes = Buffer.from(payload, 'utf8');
      cutShort.add(res);
      res.writeHead(status, { ...headers, 'content-length': String(bytes.length) });
      res.write(bytes.subarray(0, Math.min(answer.cutAfterBytes, bytes.length - 1)), () => res.destroy());
    };
    if (isError(answer)) {
      write(answer.status, JSON.stringify({ type: 'error', error: answer.error }));
      return;
    }
    const body = request?.body;
    write(
      200,
      JSON.stringify({
        id: `msg_fake_${request?.index ?? 0}`,
        type: 'message',
        role: 'assistant',
        model: answer.model ?? body?.model ?? 'fake-model',
        content: answer.content,
        stop_reason: answer.stopReason ?? 'end_turn',
        stop_sequence: null,
        usage: {
          input_tokens: estimateTokens([body?.system, body?.messages, body?.tools]),
          output_tokens: estimateTokens(answer.content),
          cache_creation_input_tokens: 0,
          cache_read_input_tokens: 0,
          ...answer.usage,
        },
      }),
    );
  }

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port ?? 0, '127.0.0.1', () => resolve());
  });
  const { port } = server.address() as AddressInfo;

  const closedEarly = () => requests.filter((r) => r.closedEarly).length;
  const close = () =>
    new Promise<void>((resolve) => {
      server.closeAllConnections();
      server.close(() => resolve());
    });
  return {
    url: `http://127.0.0.1:${port}`,
    requests,
    closedEarly,
    waitForClosedEarly: (n, timeoutMs = 5_000) =>
      new Promise<void>((resolve, reject) => {
        const timer = setTimeout(
          () => reject(new Error(`fake server: ${closedEarly()} of ${n} requests were closed early after ${timeoutMs} ms`)),
          timeoutMs,
        );
        const check = () => {
          if (closedEarly() >= n) {
            clearTimeout(timer);
            resolve();
          } else closeWaiters.push(check);
        };
        check();
      }),
    close,
    [Symbol.asyncDispose]: close,
  };
}

function lastUserText(messages: Array<{ role: string; content: unknown }>): string {
  const last = [...messages].reverse().find((m) => m.role === 'user');
  if (!last) return '';
  if (typeof last.content === 'string') return last.content;
  if (!Array.isArray(last.content)) return '';
  return last.content
    .map((b: { type?: string; text?: string; content?: unknown }) =>
      b.type === 'text' ? b.text : b.type === 'tool_result' ? (typeof b.content === 'string' ? b.content : JSON.stringify(b.content)) : '',
    )
    .join('\n');
}
