import { readFileSync } from 'node:fs';
import type { ModelRequest } from '../../src/actors/model/ModelPort.js';
import type { ScriptedAnswer } from '../../src/actors/model/ScriptedModel.js';

/**
 * The answers of the offline cassette, written by hand (no model wrote them). Each is
 * picked by what the request asks for; `record.ts` runs the examples against these and
 * records the cassette the quickstart replays. The api-tester's code is in
 * ./api-tester/, as files a person can read and run.
 */
const handWritten = (file: string) => readFileSync(new URL(`./api-tester/${file}`, import.meta.url), 'utf8');

const analyses: Record<string, string> = {
  'You analyze what a command-line tool must do':
    'Developers and CI jobs need to check that a REST endpoint answers as expected without writing test code.\n' +
    'Input: a URL, a method, headers, an optional JSON body, credentials, and expectations (status, content type, body text, JSON fields).\n' +
    'Output: one line with the status and the time taken, one FAIL line per unmet expectation; exit code 0 or 1.\n' +
    'Edge cases: bodies that are not JSON, timeouts, unreachable hosts, missing credentials, repeated headers.',
  'You design the architecture':
    'auth.js: authHeaders(credentials) -> Record<string,string>; credentialsFromEnv(env) -> Credentials.\n' +
    'requests.js: callApi({method, url, headers, body, timeoutMs}) -> Promise<{status, headers, text, json, durationMs}>; parseJson(text).\n' +
    'validator.js: validateResponse(response, expectations) -> string[] of failures; valueAt(json, dottedPath).\n' +
    'cli.js: parseArgs from node:util, builds headers with auth, calls callApi, validates, prints, exits 0 or 1.',
  'You decide which parts of a tool are deterministic code':
    'All of it is deterministic code: HTTP calls, header building, comparisons.\n' +
    'Judging a "good" response would need judgement; the tool asks the user to state expectations as flags instead.',
};

export function handWrittenAnswer(request: ModelRequest<unknown>): ScriptedAnswer {
  if (request.system.startsWith('You summarize a text')) {
    return 'Microtasks are short model calls with a timeout, a fallback and a checked answer, in flows that save every step and resume without paying twice.';
  }
  for (const [start, text] of Object.entries(analyses)) if (request.system.startsWith(start)) return text;
  const data = request.data as { module?: { name: string } } | undefined;
  switch (request.schemaName) {
    case 'code':
      if (data?.module) return { value: { code: handWritten(`${data.module.name}.js`) } };
      break;
    case 'verdict':
      return { value: { score: 0.9, feedback: 'Clear exports with JSDoc; inputs are checked; nothing important to change.' } };
    case 'toolEntry':
      return { value: { entry: handWritten('cli.js'), readme: handWritten('README.md') } };
    case 'review':
      return { value: { approved: true, feedback: '' } };
  }
  throw new Error(`no hand-written answer for a request with system prompt "${request.system.slice(0, 60)}"`);
}
