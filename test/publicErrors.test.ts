import { describe, expect, it } from 'vitest';
import { ResultsUnavailableError as FromResults } from '../src/actors/ResultsStore.js';
import { FlowHaltedError as FromHost } from '../src/flowHost.js';
import * as api from '../src/index.js';
import { StoreUnavailableError as FromPersistence } from '../src/persistence/StoreUnavailableError.js';

// Issue 11: a program using the package must tell "the flow stopped, resumable" from a
// failure, by class or by code, without importing from inside the package.
describe('the public surface exports the errors a program switches on', () => {
  it('StoreUnavailableError, ResultsUnavailableError and FlowHaltedError are the classes thrown', () => {
    expect(api.StoreUnavailableError).toBe(FromPersistence);
    expect(api.ResultsUnavailableError).toBe(FromResults);
    expect(api.FlowHaltedError).toBe(FromHost);
  });

  it('each says STORE_UNAVAILABLE; a results failure is a store failure', () => {
    const results = new api.ResultsUnavailableError('results store unavailable', { key: 'k' });
    expect(results).toBeInstanceOf(api.StoreUnavailableError);
    expect(api.isStoreUnavailable(results)).toBe(true);
    expect(results.code).toBe('STORE_UNAVAILABLE');
    expect(new api.FlowHaltedError('f1', 'could not save').code).toBe('STORE_UNAVAILABLE');
    expect(api.isStoreUnavailable(new Error('other'))).toBe(false);
  });
});
