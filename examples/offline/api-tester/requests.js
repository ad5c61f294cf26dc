// @ts-check

/**
 * @typedef {{ method: string, url: string, headers: Record<string, string>, body?: unknown, timeoutMs: number }} ApiRequest
 * @typedef {{ status: number, headers: Record<string, string>, text: string, json: unknown, durationMs: number }} ApiResponse
 */

/**
 * Calls the API once and measures the call. The body, when given, is sent as JSON.
 * @param {ApiRequest} request
 * @returns {Promise<ApiResponse>}
 */
export async function callApi(request) {
  const started = performance.now();
  const headers = { ...request.headers };
  /** @type {string | undefined} */
  let body;
  if (request.body !== undefined) {
    body = JSON.stringify(request.body);
    headers['content-type'] = headers['content-type'] ?? 'application/json';
  }
  const response = await fetch(request.url, {
    method: request.method,
    headers,
    body,
    signal: AbortSignal.timeout(request.timeoutMs),
  });
  const text = await response.text();
  return {
    status: response.status,
    headers: Object.fromEntries(response.headers.entries()),
    text,
    json: parseJson(text),
    durationMs: Math.round(performance.now() - started),
  };
}

/**
 * The body as JSON, or undefined when it is not JSON.
 * @param {string} text
 * @returns {unknown}
 */
export function parseJson(text) {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}
