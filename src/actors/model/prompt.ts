import { z } from 'zod';

/** The user message every implementation sends: the prompt, then the data as JSON. */
export function renderUserMessage(prompt: string, data: unknown): string {
  if (data === undefined) return prompt;
  return `${prompt}\n\n<data>\n${JSON.stringify(data, null, 2)}\n</data>`;
}

/**
 * The JSON Schema of a structured answer, as a tool's `input_schema`. Tool input must be
 * an object, so a schema of any other type is wrapped as `{ value: ... }`; `unwrap`
 * takes it back out.
 */
export function answerJsonSchema(schema: z.ZodType): {
  inputSchema: Record<string, unknown>;
  unwrap: (input: unknown) => unknown;
} {
  const { $schema: _ignored, ...json } = z.toJSONSchema(schema, { io: 'input', unrepresentable: 'any' }) as Record<
    string,
    unknown
  >;
  if (json.type === 'object') return { inputSchema: json, unwrap: (input) => input };
  return {
    inputSchema: { type: 'object', properties: { value: json }, required: ['value'], additionalProperties: false },
    unwrap: (input) => (input as { value?: unknown } | null)?.value,
  };
}

/** A zod error as lines a model (or a person) can act on: path, then what is wrong. */
export function describeIssues(error: z.ZodError): string {
  return error.issues
    .map((issue) => `- ${issue.path.length ? issue.path.join('.') : '(root)'}: ${issue.message}`)
    .join('\n');
}
