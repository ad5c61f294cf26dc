#!/usr/bin/env node
// @ts-check
import { parseArgs } from 'node:util';
import { authHeaders, credentialsFromEnv } from './auth.js';
import { callApi } from './requests.js';
import { validateResponse } from './validator.js';

const usage = `Usage: api-tester <url> [options]

Calls a REST endpoint and checks its answer.

Options:
  -X, --method <method>      HTTP method (default GET)
  -H, --header <name:value>  a request header (repeatable)
  -d, --data <json>          a JSON request body
  --token <token>            bearer token (or API_TOKEN; API_USER and API_PASSWORD for basic auth)
  --expect-status <code>     the status expected
  --expect-type <type>       a content type the answer must have, e.g. application/json
  --expect-body <text>       text the body must include
  --expect-json <path=json>  a JSON field expected, e.g. data.id=42 or name='"x"' (repeatable)
  --timeout <ms>             give up after this many milliseconds (default 10000)
  -h, --help                 show this help

Exit codes: 0 every expectation holds, 1 one does not, 2 wrong usage, 3 the call failed.
`;

/**
 * Stops with a one-line message instead of a stack trace.
 * @param {number} code
 * @param {string} message
 * @returns {never}
 */
function fail(code, message) {
  process.stderr.write(`api-tester: ${message}\n`);
  process.exit(code);
}

/**
 * @param {string} text
 * @param {string} what
 * @returns {unknown}
 */
function parseJsonArg(text, what) {
  try {
    return JSON.parse(text);
  } catch {
    return fail(2, `${what} is not JSON: ${text} (quote strings: name='"x"')`);
  }
}

/** @type {ReturnType<typeof parseArgs>} */
let parsed;
try {
  parsed = parseArgs({
    allowPositionals: true,
    options: {
      method: { type: 'string', short: 'X', default: 'GET' },
      header: { type: 'string', short: 'H', multiple: true, default: [] },
      data: { type: 'string', short: 'd' },
      token: { type: 'string' },
      'expect-status': { type: 'string' },
      'expect-type': { type: 'string' },
      'expect-body': { type: 'string' },
      'expect-json': { type: 'string', multiple: true, default: [] },
      timeout: { type: 'string', default: '10000' },
      help: { type: 'boolean', short: 'h' },
    },
  });
} catch (e) {
  fail(2, `${e instanceof Error ? e.message : String(e)} (see --help)`);
}
const values = /** @type {Record<string, any>} */ (parsed.values);
const positionals = parsed.positionals;

if (values.help) {
  process.stdout.write(usage);
  process.exit(0);
}
if (positionals.length !== 1) fail(2, 'give exactly one URL (see --help)');

const timeoutMs = Number(values.timeout);
if (!Number.isInteger(timeoutMs) || timeoutMs < 1) fail(2, `--timeout must be a whole number of milliseconds, not ${values.timeout}`);
const expectedStatus = values['expect-status'] === undefined ? undefined : Number(values['expect-status']);
if (expectedStatus !== undefined && !Number.isInteger(expectedStatus)) fail(2, `--expect-status must be a number, not ${values['expect-status']}`);

/** @type {Record<string, string>} */
const headers = {};
for (const header of values.header ?? []) {
  const at = header.indexOf(':');
  if (at <= 0) fail(2, `--header must be name:value, not ${header}`);
  headers[header.slice(0, at).trim().toLowerCase()] = header.slice(at + 1).trim();
}
const credentials = values.token ? { token: values.token } : credentialsFromEnv(process.env);
Object.assign(headers, authHeaders(credentials));

/** @type {Record<string, unknown>} */
const json = {};
for (const pair of values['expect-json'] ?? []) {
  const at = pair.indexOf('=');
  if (at <= 0) fail(2, `--expect-json must be path=json, not ${pair}`);
  json[pair.slice(0, at)] = parseJsonArg(pair.slice(at + 1), `--expect-json ${pair.slice(0, at)}`);
}

const url = String(positionals[0]);
let response;
try {
  response = await callApi({
    method: String(values.method ?? 'GET').toUpperCase(),
    url,
    headers,
    body: values.data === undefined ? undefined : parseJsonArg(values.data, '--data'),
    timeoutMs,
  });
} catch (e) {
  const error = /** @type {{ name?: string, message?: string, cause?: { message?: string } }} */ (e);
  if (error.name === 'TimeoutError') fail(3, `${url} did not answer within ${timeoutMs} ms`);
  fail(3, `cannot call ${url}: ${error.cause?.message ?? error.message ?? String(e)}`);
}
const failures = validateResponse(response, {
  status: expectedStatus,
  contentType: values['expect-type'],
  bodyIncludes: values['expect-body'],
  json,
});
process.stdout.write(`${response.status} in ${response.durationMs} ms\n`);
for (const failure of failures) process.stdout.write(`FAIL ${failure}\n`);
process.exit(failures.length ? 1 : 0);
