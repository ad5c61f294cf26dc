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

/** The examples of each pattern (examples/<pattern>.json), so each runs offline too. */
function patternExampleAnswer(request: ModelRequest<unknown>): ScriptedAnswer | undefined {
  const { system, prompt } = request;
  const data = request.data as Record<string, unknown> | undefined;
  const output = String(data?.output ?? '');
  if (system.startsWith('You summarize a text')) {
    return 'Microtasks are short model calls with a timeout, a fallback and a checked answer, in flows that save every step and resume without paying twice.';
  }
  // feedback-loop: a vague first draft, a specific revision.
  if (system.startsWith('You write the subject line of a git commit')) {
    return prompt.includes('<previous_attempt>') ? 'Fix pagination skipping the last page' : 'Fix loop';
  }
  if (system.startsWith('You judge commit subject lines')) {
    return output === 'Fix loop'
      ? { value: { score: 0.4, feedback: 'Too vague: say which loop and what it broke for the user (the last page was skipped).' } }
      : { value: { score: 0.9, feedback: '' } };
  }
  // parallel
  if (system.startsWith('You translate into French')) return 'Bonjour, le build est vert.';
  if (system.startsWith('You translate into German')) return 'Guten Morgen, der Build ist grün.';
  if (system.startsWith('You translate into Spanish')) return 'Buenos días, la compilación está en verde.';
  // incremental
  if (system.startsWith('You extract the color')) {
    const item = String(data?.item ?? '');
    return item.includes('red') ? 'red' : item.includes('blue') ? 'blue' : 'green';
  }
  // metacognitive
  if (system.startsWith('You classify support tickets')) return 'bug';
  // progressive: level 0 has no code-only solver for a regex, level 1 falls short, level 2 passes.
  if (system.startsWith('You write JavaScript regular expressions')) return '\\d{4}-\\d{2}-\\d{2}';
  if (system.startsWith('You are an expert in regular expressions')) return '^\\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\\d|3[01])$';
  if (system.startsWith('You judge regular expressions')) {
    return output.startsWith('^')
      ? { value: { score: 0.9, feedback: 'Anchored and validates month and day ranges.' } }
      : { value: { score: 0.3, feedback: 'Not anchored: matches inside 2026-11-25T10:00; accepts month 13.' } };
  }
  // reentrant: the first entry leaks the ticket id, the revision does not.
  if (system.startsWith('You write one release-note entry')) {
    return prompt.includes('feedback')
      ? 'Large exports are now reliable: exporting a million orders no longer fails for lack of memory.'
      : 'PERF-2211: exports of a million orders no longer run out of memory.';
  }
  if (system.startsWith('You review release-note entries')) {
    return output.includes('PERF-')
      ? { value: { approved: false, feedback: 'Remove the internal ticket id PERF-2211; lead with what users get.' } }
      : { value: { approved: true, feedback: '' } };
  }
  return undefined;
}

export function handWrittenAnswer(request: ModelRequest<unknown>): ScriptedAnswer {
  const example = patternExampleAnswer(request);
  if (example !== undefined) return example;
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
