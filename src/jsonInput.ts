/**
 * JSON that comes from outside (a request on the bus, a file given on the command line),
 * read the same way wherever it enters: the daemon and the CLI accept and refuse alike.
 */

/**
 * How deep arrays and objects may nest in an input. Real inputs nest a handful of levels;
 * much deeper data would overflow the stack of the recursive code that later walks it
 * (schemas, snapshot checks, JSON.stringify), failing as an internal error instead of as
 * bad input. docs/protocol.md documents it.
 */
export const MAX_JSON_DEPTH = 64;

/**
 * How deep arrays and objects may nest in a record the orchestrator writes (a flow's
 * snapshot, a task on the queue): JSON.stringify recurses, and V8's overflows its stack a
 * few thousand levels down (fewer when called deep in a stack). Real records nest a few dozen.
 */
export const MAX_RECORD_DEPTH = 1_000;
/** How deep a model's answer may nest: well within a record, which holds it a few dozen levels down. */
export const MAX_ANSWER_DEPTH = 500;

export type JsonInputErrorCode = 'NOT_JSON' | 'TOO_DEEP';

export class JsonInputError extends Error {
  override readonly name = 'JsonInputError';
  constructor(
    readonly code: JsonInputErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

const BOM = '\uFEFF';
// ignoreBOM keeps the mark in the text, so bytes and strings lose exactly one, below.
const decoder = new TextDecoder('utf-8', { ignoreBOM: true });

/**
 * Parses JSON text from outside: a leading UTF-8 byte order mark (some editors write one)
 * is dropped, and data nested deeper than `maxDepth` is refused before any schema or
 * recursive code sees it. The message is a predicate ("is not JSON: ..."): callers put
 * the name of what they read first ("the tool spec ...").
 */
export function parseJsonInput(text: string | Uint8Array, maxDepth = MAX_JSON_DEPTH): unknown {
  let source = typeof text === 'string' ? text : decoder.decode(text);
  if (source.startsWith(BOM)) source = source.slice(BOM.length);
  let value: unknown;
  try {
    // V8's JSON.parse does not recurse: any depth parses; what comes after it may not.
    value = JSON.parse(source);
  } catch (e) {
    throw new JsonInputError('NOT_JSON', `is not JSON: ${(e as Error).message}`, { cause: e });
  }
  if (depthExceeds(value, maxDepth)) {
    throw new JsonInputError('TOO_DEEP', `is nested deeper than ${maxDepth} levels of arrays and objects (the limit)`);
  }
  return value;
}

/** Whether arrays and objects nest deeper than `max` in `value`; iterative, so any depth is safe to check. */
export function depthExceeds(value: unknown, max: number): boolean {
  const pending: Array<[unknown, number]> = [[value, 1]];
  for (let next = pending.pop(); next; next = pending.pop()) {
    const [item, depth] = next;
    if (item === null || typeof item !== 'object') continue;
    if (depth > max) return true;
    for (const child of Array.isArray(item) ? item : Object.values(item)) {
      if (child !== null && typeof child === 'object') pending.push([child, depth + 1]);
    }
  }
  return false;
}
