/** What `microtask` exits with. Documented in the README and in `microtask --help`. */
export const ExitCode = {
  ok: 0,
  /** The flow ran and finished, but not with success (failed, fallback, budget exceeded). */
  flowFailed: 1,
  /** Wrong usage: unknown command or flag, unreadable or invalid input file, bad environment. */
  usage: 2,
  /**
   * The flow's store stopped it (a full disk, a store down past its retries) or refused its
   * start: the user's to fix, like a bad environment; the flow is resumable.
   */
  storeUnavailable: 2,
  /** Something broke that is not the user's doing; the message and logs say what. */
  internal: 3,
} as const;

export { UsageError } from '../UsageError.js';
