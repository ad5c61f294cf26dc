import { z } from 'zod';

/**
 * The bounds of a microtask's timeout and answer size. A contract, because every schema
 * that takes them must use the same ones (a flow's task specs, the microtask input, the
 * metacognitive pattern's analysis, a model's suggested adjustments, the configuration),
 * and machines and actors both read them without importing each other.
 */

/**
 * The longest a microtask may take: 10 minutes, as MICROTASK_TIMEOUT_MS allows and the SDK's
 * HTTP timeout. Far below setTimeout's limit (2^31-1 ms), past which a timer fires at once.
 */
export const MAX_MICROTASK_TIMEOUT_MS = 600_000;
/**
 * The most tokens an answer may be given, as MICROTASK_MAX_TOKENS allows: the largest
 * output of current Claude models; a model with less refuses the request (invalid_request).
 */
export const MAX_TOKENS = 128_000;

const timeoutError = `a whole number of milliseconds between 1 and ${MAX_MICROTASK_TIMEOUT_MS} (10 minutes)`;
const tokensError = `a whole number of tokens between 1 and ${MAX_TOKENS}`;

/** A microtask's timeout: refused at the edge when out of range, saying the range. */
export const timeoutMsSchema = () =>
  z
    .number({ error: timeoutError })
    .int({ error: timeoutError })
    .min(1, { error: timeoutError })
    .max(MAX_MICROTASK_TIMEOUT_MS, { error: timeoutError });

/** The tokens one answer may use. Not a flow's budget of tokens, which spans many calls. */
export const maxTokensSchema = () =>
  z.number({ error: tokensError }).int({ error: tokensError }).min(1, { error: tokensError }).max(MAX_TOKENS, { error: tokensError });
