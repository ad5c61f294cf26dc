import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connectNatsBus } from '../../src/bus/NatsBus.js';
import { startNatsServer, type NatsServer } from '../../src/testing/natsServer.js';
import { until } from './contract.js';

// Issue 12: each worker slot pulled one job per request (a pull request, an inbox
// subscribed and dropped, per job). A consumer pulls for all its free slots at once.
let server: NatsServer;
beforeAll(async () => {
  server = await startNatsServer();
});
afterAll(async () => {
  await server?.close();
});

describe('a NATS work consumer', () => {
  it('takes a batch of waiting jobs with a few pull requests, not one per job, and never more at once than its slots', async () => {
    const bus = await connectNatsBus({ servers: [server.url], subjectPrefix: 'pull' });
    const spy = await connectNatsBus({ servers: [server.url], subjectPrefix: 'pull' });
    try {
      const queue = await bus.workQueue('jobs');
      const total = 200;
      for (let i = 0; i < total; i++) await queue.enqueue(`job-${i}`, String(i));
      // Pull requests are messages on the consumer's API subject: another connection sees them.
      let pulls = 0;
      await spy.subscribe('$JS.API.CONSUMER.MSG.NEXT.>', () => void pulls++);
      const seen = new Set<string>();
      let running = 0;
      let most = 0;
      const consumer = await queue.consume(
        async (job) => {
          running++;
          most = Math.max(most, running);
          await new Promise((resolve) => setImmediate(resolve));
          seen.add(job.id);
          running--;
          await job.ack();
        },
        { concurrency: 50 },
      );
      await until(() => seen.size === total, { timeoutMs: 20_000, what: `all ${total} jobs` });
      await consumer.stop();
      expect(most).toBeLessThanOrEqual(50);
      expect(most).toBeGreaterThan(1);
      // A pull per job gave 200; a pull per batch of free slots gives a handful.
      expect(pulls).toBeLessThan(total / 5);
    } finally {
      await spy.close();
      await bus.close();
    }
  });
});
