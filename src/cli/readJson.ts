import { readFile } from 'node:fs/promises';
import type { z } from 'zod';
import { describeIssues } from '../actors/model/prompt.js';
import { UsageError } from './exitCodes.js';

/** Reads a JSON file given on the command line and checks it, or says plainly what is wrong. */
export async function readJsonFile<T>(path: string, schema: z.ZodType<T>, what: string): Promise<T> {
  let raw: string;
  try {
    raw = await readFile(path, 'utf8');
  } catch (e) {
    throw new UsageError(`cannot read ${what} ${path}: ${(e as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (e as Error).message}`, 'INPUT_UNREADABLE');
  }
  let json: unknown;
  try {
    json = JSON.parse(raw);
  } catch (e) {
    throw new UsageError(`${what} ${path} is not JSON: ${(e as Error).message}`, 'INPUT_NOT_JSON');
  }
  const parsed = schema.safeParse(json);
  if (!parsed.success) throw new UsageError(`${what} ${path} is invalid:\n${describeIssues(parsed.error)}`, 'INPUT_INVALID');
  return parsed.data;
}
