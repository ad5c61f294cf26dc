import { MemoryBus } from '../support/MemoryBus.js';
import { runBusContract } from './contract.js';

runBusContract('MemoryBus', async () => {
  const bus = new MemoryBus();
  return { bus, second: async () => bus, close: () => bus.close() };
});
