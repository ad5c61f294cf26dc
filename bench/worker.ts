/**
 * The benchmark's worker process: `microtask worker` (startWorkerService) with the real
 * SDK when BENCH_MODEL=sdk, otherwise the same worker with the instant scripted model.
 * Prints `ready` once it takes tasks; stops on SIGTERM.
 */
import { connectNatsBus } from '../src/bus/NatsBus.js';
import { loadConfig } from '../src/config.js';
import { silentLogger } from '../src/log.js';
import { startWorkerService } from '../src/services.js';
import { benchModel } from './lib.js';

const config = loadConfig(process.env);
const bus = await connectNatsBus({ servers: config.NATS_URL! });
const consumer =
  process.env.BENCH_MODEL === 'sdk'
    ? await startWorkerService(bus, config, silentLogger)
    : await startWorkerService(bus, config, silentLogger, { model: benchModel(), description: 'instant' });
process.stdout.write('ready\n');
process.on('SIGTERM', () => {
  void consumer.stop().then(() => bus.close()).finally(() => process.exit(0));
});
