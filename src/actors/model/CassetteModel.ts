import { createHash } from 'node:crypto';
import { readFile, rename, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import { z } from 'zod';
import { UsageSchema, zeroUsage } from '../../contracts/usage.js';
import { abortedError } from './abort.js';
import { ModelError } from './ModelError.js';
import type { ModelPort, ModelRequest, ModelResponse } from './ModelPort.js';
import { answerJsonSchema, describeIssues, renderUserMessage } from './prompt.js';
import { mkdirs } from '../../mkdirs.js';

const EntrySchema = z.object({
  key: z.string(),
  request: z.object({
    system: z.string(),
    user: z.string(),
    schema: z.record(z.string(), z.unknown()).optional(),
  }),
  response: z.object({
    text: z.string(),
    value: z.unknown().optional(),
    usage: UsageSchema,
    model: z.string(),
    stopReason: z.string(),
    requestId: z.string().optional(),
  }),
});
export const CassetteFileSchema = z.object({
  version: z.literal(1),
  /** Where the answers came from: `recorded from <model>` or `hand-written`. */
  source: z.string(),
  entries: z.array(EntrySchema),
});
export type CassetteFile = z.infer<typeof CassetteFileSchema>;
type Entry = z.infer<typeof EntrySchema>;

export class CassetteError extends Error {
  override readonly name = 'CassetteError';
  readonly code = 'CASSETTE_INVALID';
}

/**
 * What identifies a request on a cassette: what the model reads (system, user message,
 * answer schema), not the model name or max tokens, so a cassette recorded with one model
 * replays under another configuration.
 */
export function cassetteKey(request: ModelRequest<unknown>): { key: string; request: Entry['request'] } {
  const recorded: Entry['request'] = {
    system: request.system,
    user: renderUserMessage(request.prompt, request.data),
    ...(request.schema ? { schema: answerJsonSchema(request.schema).inputSchema } : {}),
  };
  const key = createHash('sha256').update(JSON.stringify(recorded)).digest('hex').slice(0, 24);
  return { key, request: recorded };
}

export async function loadCassette(path: string): Promise<CassetteFile> {
  let raw: string;
  try {
    raw = await readFile(path, 'utf8');
  } catch (e) {
    throw new CassetteError(`cannot read cassette ${path}: ${(e as Error).message}`, { cause: e });
  }
  let json: unknown;
  try {
    json = JSON.parse(raw);
  } catch (e) {
    throw new CassetteError(`cassette ${path} is not JSON: ${(e as Error).message}`, { cause: e });
  }
  const parsed = CassetteFileSchema.safeParse(json);
  if (!parsed.success) throw new CassetteError(`cassette ${path} has the wrong shape:\n${describeIssues(parsed.error)}`);
  return parsed.data;
}

/**
 * The start of a prompt for an error message that stays on one line: its newlines (and
 * quotes) escaped as in JSON, an ellipsis after the quotes when cut. Cut between code
 * points, so no half of an emoji shows up as `\ud83d`.
 */
function promptExcerpt(prompt: string, max = 60): string {
  const points = Array.from(prompt.slice(0, max * 2));
  const cut = points.length > max || prompt.length > max * 2;
  return `${JSON.stringify(points.slice(0, max).join(''))}${cut ? '…' : ''}`;
}

/**
 * Replays recorded answers offline and deterministically: the n-th request with a given
 * key gets the n-th answer recorded under it (the last one again once they run out). A
 * request that was never recorded fails as `cassette_miss`, naming the key.
 */
export class CassetteReplayModel implements ModelPort {
  readonly name = 'cassette';
  private readonly byKey = new Map<string, Entry[]>();
  private readonly seen = new Map<string, number>();

  constructor(cassette: CassetteFile, private readonly path = 'cassette') {
    for (const entry of cassette.entries) {
      const list = this.byKey.get(entry.key) ?? [];
      list.push(entry);
      this.byKey.set(entry.key, list);
    }
  }

  static async fromFile(path: string): Promise<CassetteReplayModel> {
    return new CassetteReplayModel(await loadCassette(path), path);
  }

  async call<T = string>(request: ModelRequest<T>): Promise<ModelResponse<T>> {
    if (request.signal?.aborted) throw abortedError(request.signal);
    const { key } = cassetteKey(request as ModelRequest<unknown>);
    const entries = this.byKey.get(key);
    if (!entries?.length) {
      // No model was asked and nothing was paid: no call (a failed call counts as one unless it says otherwise).
      throw new ModelError(
        'cassette_miss',
        `no answer recorded on ${this.path} for this request (key ${key}, prompt ${promptExcerpt(request.prompt)}); record it with MICROTASK_RECORD`,
        { usage: zeroUsage() },
      );
    }
    const n = this.seen.get(key) ?? 0;
    this.seen.set(key, n + 1);
    const { response } = entries[Math.min(n, entries.length - 1)]!;
    if (!request.schema) return { ...response, requestId: response.requestId, value: response.text as T };
    const parsed = request.schema.safeParse(response.value);
    if (!parsed.success) {
      throw new ModelError('invalid_output', `the recorded answer does not fit the schema:\n${describeIssues(parsed.error)}`);
    }
    return { ...response, requestId: response.requestId, value: parsed.data };
  }
}

/**
 * Passes every call to `inner` and appends the answer to a cassette file, written after
 * each call (temp file, then rename) so a crash loses at most the call in flight.
 */
export class CassetteRecorder implements ModelPort {
  readonly name: string;
  private readonly cassette: CassetteFile;
  private writing: Promise<void> = Promise.resolve();

  constructor(
    private readonly inner: ModelPort,
    private readonly path: string,
    source = `recorded from ${inner.name}`,
    existing?: CassetteFile,
  ) {
    this.name = `recording(${inner.name})`;
    this.cassette = existing ?? { version: 1, source, entries: [] };
  }

  async call<T = string>(request: ModelRequest<T>): Promise<ModelResponse<T>> {
    const response = await this.inner.call(request);
    const { key, request: recorded } = cassetteKey(request as ModelRequest<unknown>);
    this.cassette.entries.push({
      key,
      request: recorded,
      response: {
        text: response.text,
        ...(request.schema ? { value: response.value } : {}),
        usage: response.usage,
        model: response.model,
        stopReason: response.stopReason,
        ...(response.requestId ? { requestId: response.requestId } : {}),
      },
    });
    await this.save();
    return response;
  }

  /** Resolves when every answer so far is on disk. */
  save(): Promise<void> {
    const json = `${JSON.stringify(this.cassette, null, 2)}\n`;
    this.writing = this.writing.then(async () => {
      await mkdirs(dirname(this.path));
      const temp = `${this.path}.${process.pid}.tmp`;
      await writeFile(temp, json);
      await rename(temp, this.path);
    });
    return this.writing;
  }
}
