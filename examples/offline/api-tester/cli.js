#!/usr/bin/env node
// @ts-check
import { parseArgs } from 'node:util';
import { authHeaders, credentialsFromEnv } from './auth.js';
import { callApi } from './requests.js';
import { validateResponse } from './validator.js';

const usage = `Usage: api-tester <url> [options]

Calls a REST endpoint and checks its answer. Exits 0 when every expectation holds, 1 otherwise.

Options:
  -X, --method <method>      HTTP method (default GET)
  -H, --header <name:value>  a request header (repeatable)
  -d, --data <json>          a JSON request body
  --token <token>            bearer token (or API_TOKEN; API_USER and API_PASSWORD for basic auth)
  --expect-status <code>     the status expected
  --expect-type <type>       a content type the answer must have, e.g. application/json
  --expect-body <text>       text the body must include
  --expect-json <path=json>  a JSON field expected, e.g. data.id=42 (repeatable)
  --timeout <ms>             give up after this many milliseconds (default 10000)
  -h, --help                 show this help
`;

const { values, positionals } = parseArgs({
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

if (values.help || positionals.length !== 1) {
  process.stdout.write(usage);
  process.exit(values.help ? 0 : 2);
}

/** @type {Record<string, string>} */
const headers = {};
for (const header of values.header ?? []) {
  const at = header.indexOf(':');
  if (at > 0) headers[header.slice(0, at).trim().toLowerCase()] = header.slice(at + 1).trim();
}
const credentials = values.token ? { token: values.token } : credentialsFromEnv(process.env);
Object.assign(headers, authHeaders(credentials));

/** @type {Record<string, unknown>} */
const json = {};
for (const pair of values['expect-json'] ?? []) {
  const at = pair.indexOf('=');
  if (at > 0) json[pair.slice(0, at)] = JSON.parse(pair.slice(at + 1));
}

const response = await callApi({
  method: (values.method ?? 'GET').toUpperCase(),
  url: String(positionals[0]),
  headers,
  body: values.data === undefined ? undefined : JSON.parse(values.data),
  timeoutMs: Number(values.timeout),
});
const failures = validateResponse(response, {
  status: values['expect-status'] === undefined ? undefined : Number(values['expect-status']),
  contentType: values['expect-type'],
  bodyIncludes: values['expect-body'],
  json,
});
process.stdout.write(`${response.status} in ${response.durationMs} ms\n`);
for (const failure of failures) process.stdout.write(`FAIL ${failure}\n`);
process.exit(failures.length ? 1 : 0);
