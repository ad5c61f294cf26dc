import type { Usage } from '../../contracts/usage.js';
import { abortedError, sleep } from './abort.js';
import { ModelError } from './ModelError.js';
import type { ModelPort, ModelRequest, ModelResponse } from './ModelPort.js';
import { describeIssues, renderUserMessage } from './prompt.js';

/**
 * One scripted answer: a string (the text), `{ value }` (a structured answer, validated
 * against the request's schema like a real one), a `ModelError` to throw, or any of
 * these after `delayMs` (honouring the request's AbortSignal).
 */
export type ScriptedAnswer =
  | string
  | ModelError
  | { value: unknown; delayMs?: number; usage?: Partial<Usage>; model?: string }
  | { text: string; delayMs?: number; usage?: Partial<Usage>; model?: string }
  | { error: ModelError; delayMs?: number };

export interface ScriptedCall {
  index: number;
  request: Omit<ModelRequest<unknown>, 'signal' | 'schema'> & { hasSchema: boolean };
}

export type Script =
  | ScriptedAnswer[]
  | ((request: ModelRequest<unknown>, index: number) => ScriptedAnswer | Promise<ScriptedAnswer>);

/**
 * A model that answers from a list or a function: for tests, and for recording the
 * hand-written offline cassette. Usage is estimated from text length (4 characters a
 * token) unless the answer says, so token accounting can be tested too.
 */
export class ScriptedModel implements ModelPort {
  readonly name = 'scripted';
  readonly calls: ScriptedCall[] = [];

  constructor(
    private readonly script: Script,
    private readonly modelName = 'scripted-model',
  ) {}

  async call<T = string>(request: ModelRequest<T>): Promise<ModelResponse<T>> {
    const index = this.calls.length;
    const { signal, schema, ...rest } = request;
    this.calls.push({ index, request: { ...rest, hasSchema: schema !== undefined } });
    if (signal?.aborted) throw abortedError(signal);

    const answer = Array.isArray(this.script)
      ? this.script[index] ?? new ModelError('unknown', `scripted model: no answer scripted for call #${index}`)
      : await this.script(request as ModelRequest<unknown>, index);

    if (answer instanceof ModelError) throw answer;
    if (typeof answer !== 'string' && answer.delayMs) await sleep(answer.delayMs, signal);
    if (typeof answer !== 'string' && 'error' in answer) throw answer.error;

    const text = typeof answer === 'string' ? answer : 'text' in answer ? answer.text : JSON.stringify(answer.value);
    const usage: Usage = {
      inputTokens: estimate(request.system + renderUserMessage(request.prompt, request.data)),
      outputTokens: estimate(text),
      cacheCreationInputTokens: 0,
      cacheReadInputTokens: 0,
      calls: 1,
      ...(typeof answer === 'string' ? {} : 'usage' in answer ? answer.usage : {}),
    };
    const model = (typeof answer !== 'string' && 'model' in answer && answer.model) || request.model || this.modelName;
    const base = { text, usage, model, stopReason: schema ? 'tool_use' : 'end_turn', requestId: `scripted_${index}` };

    if (!schema) return { ...base, value: text as T };
    let raw: unknown;
    if (typeof answer !== 'string' && 'value' in answer) raw = answer.value;
    else {
      try {
        raw = JSON.parse(text);
      } catch {
        throw new ModelError('invalid_output', `scripted model: the answer is not JSON: ${text.slice(0, 80)}`);
      }
    }
    const parsed = schema.safeParse(raw);
    if (!parsed.success) {
      throw new ModelError('invalid_output', `the model's answer does not fit the schema:\n${describeIssues(parsed.error)}`);
    }
    return { ...base, value: parsed.data };
  }
}

const estimate = (text: string) => Math.max(1, Math.ceil(text.length / 4));
