// @ts-check

/**
 * @typedef {{ status?: number, contentType?: string, bodyIncludes?: string, json?: Record<string, unknown> }} Expectations
 * @typedef {{ status: number, headers: Record<string, string>, text: string, json: unknown }} Response
 */

/**
 * Every way the response differs from the expectations; an empty list means it passed.
 * `json` maps dotted paths (`data.items.0.id`) to the values expected there.
 * @param {Response} response
 * @param {Expectations} expected
 * @returns {string[]}
 */
export function validateResponse(response, expected) {
  /** @type {string[]} */
  const failures = [];
  if (expected.status !== undefined && response.status !== expected.status) {
    failures.push(`status is ${response.status}, expected ${expected.status}`);
  }
  const contentType = response.headers['content-type'] ?? '';
  if (expected.contentType !== undefined && !contentType.includes(expected.contentType)) {
    failures.push(`content-type is "${contentType}", expected "${expected.contentType}"`);
  }
  if (expected.bodyIncludes !== undefined && !response.text.includes(expected.bodyIncludes)) {
    failures.push(`body does not include "${expected.bodyIncludes}"`);
  }
  for (const [path, value] of Object.entries(expected.json ?? {})) {
    const actual = valueAt(response.json, path);
    if (JSON.stringify(actual) !== JSON.stringify(value)) {
      failures.push(`${path} is ${JSON.stringify(actual)}, expected ${JSON.stringify(value)}`);
    }
  }
  return failures;
}

/**
 * The value at a dotted path in a JSON value, or undefined.
 * @param {unknown} value
 * @param {string} path
 * @returns {unknown}
 */
export function valueAt(value, path) {
  /** @type {any} */
  let current = value;
  for (const part of path.split('.')) {
    if (current === null || typeof current !== 'object') return undefined;
    current = current[part];
  }
  return current;
}
