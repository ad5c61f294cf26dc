import { readFile } from 'node:fs/promises';
import type { z } from 'zod';
import { describeIssues } from '../actors/model/prompt.js';
import { UsageError } from './exitCodes.js';
import { JsonInputError, parseJsonInput } from '../jsonInput.js';

/**
 * Reads a JSON file given on the command line and checks it, or says plainly what is wrong.
 * Read as the daemon reads a request (parseJsonInput): a byte order mark is fine, too deep is not.
 */
export async function readJsonFile<T>(path: string, schema: z.ZodType<T>, what: string): Promise<T> {
  let raw: string;
  try {
    raw = await readFile(path, 'utf8');
  } catch (e) {
    throw new UsageError(`cannot read ${what} ${path}: ${(e as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (e as Error).message}`, 'INPUT_UNREADABLE');
  }
  let json: unknown;
  try {
    json = parseJsonInput(raw);
  } catch (e) {
    if (!(e instanceof JsonInputError)) throw e;
    throw new UsageError(`${what} ${path} ${e.message}`, e.code === 'TOO_DEEP' ? 'INPUT_TOO_DEEP' : 'INPUT_NOT_JSON');
  }
  const parsed = schema.safeParse(json);
  if (!parsed.success) throw new UsageError(`${what} ${path} is invalid:\n${describeIssues(parsed.error)}`, 'INPUT_INVALID');
  return parsed.data;
}
