import { MemoryResultsStore } from '../../src/actors/ResultsStore.js';
import { runResultsStoreContract } from './resultsStoreContract.js';

// In memory: no second instance over the same storage, nothing survives a crash, no raw writes.
runResultsStoreContract('MemoryResultsStore', async () => ({ store: new MemoryResultsStore(), close: async () => {} }), { inMemory: true });
