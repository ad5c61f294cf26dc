// @ts-check

/**
 * @typedef {{ token?: string, user?: string, password?: string }} Credentials
 */

/**
 * The Authorization header for the given credentials: a bearer token wins over basic auth.
 * @param {Credentials} credentials
 * @returns {Record<string, string>}
 */
export function authHeaders(credentials) {
  if (credentials.token) return { authorization: `Bearer ${credentials.token}` };
  if (credentials.user !== undefined) {
    const basic = Buffer.from(`${credentials.user}:${credentials.password ?? ''}`).toString('base64');
    return { authorization: `Basic ${basic}` };
  }
  return {};
}

/**
 * Credentials from the environment: API_TOKEN, or API_USER and API_PASSWORD.
 * @param {Record<string, string | undefined>} env
 * @returns {Credentials}
 */
export function credentialsFromEnv(env) {
  if (env.API_TOKEN) return { token: env.API_TOKEN };
  if (env.API_USER) return { user: env.API_USER, password: env.API_PASSWORD ?? '' };
  return {};
}
