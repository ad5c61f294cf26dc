/**
 * The benchmark's worker process: `microtask worker` (startWorkerService) with the real
 * SDK when BENCH_MODEL=sdk, otherwise the same worker with the instant scripted model.
 * Prints `ready` once it takes tasks; stops on SIGTERM.
 */
import { CircuitBreaker } from '../src/actors/CircuitBreaker.js';
import { MicrotaskRunner } from '../src/actors/microtask.js';
import { KvResultsStore } from '../src/bus/KvResultsStore.js';
import { connectNatsBus } from '../src/bus/NatsBus.js';
import { subjects } from '../src/bus/subjects.js';
import { loadConfig } from '../src/config.js';
import { silentLogger } from '../src/log.js';
import { answerSchemas } from '../src/machines/answers.js';
import { startWorkerService, taskQueue } from '../src/services.js';
import { startWorker } from '../src/worker.js';
import { benchModel } from './lib.js';

const config = loadConfig(process.env);
const bus = await connectNatsBus({ servers: config.NATS_URL! });
let consumer: { stop(): Promise<void> };
if (process.env.BENCH_MODEL === 'sdk') {
  consumer = await startWorkerService(bus, config, silentLogger);
} else {
  // startWorkerService with the model swapped for the instant one.
  const names = subjects(config.MICROTASK_SUBJECT_PREFIX);
  const results = new KvResultsStore(await bus.keyValue(names.resultsBucket));
  const runner = new MicrotaskRunner({ model: benchModel(), results, answers: answerSchemas, breaker: new CircuitBreaker(500) });
  consumer = await startWorker({
    queue: await taskQueue(bus, config),
    runner,
    results,
    announce: (key, result) => bus.publish(names.taskResult(key), JSON.stringify(result)),
    concurrency: config.MICROTASK_WORKER_CONCURRENCY,
    heartbeatMs: Math.max(100, Math.floor(config.MICROTASK_ACK_WAIT_MS / 3)),
  });
}
process.stdout.write('ready\n');
process.on('SIGTERM', () => {
  void consumer.stop().then(() => bus.close()).finally(() => process.exit(0));
});
