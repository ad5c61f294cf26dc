// Starts a `triage` flow on the daemons on NATS and prints its result when it ends:
//   NATS_URL=nats://127.0.0.1:4222 node start.js issues.json
import { readFile } from 'node:fs/promises';
import { MicrotaskClient } from 'microtask-orchestrator/client';

const input = JSON.parse(await readFile(process.argv[2] ?? 'issues.json', 'utf8'));
const client = await MicrotaskClient.connect({ servers: (process.env.NATS_URL ?? 'nats://127.0.0.1:4222').split(',') });
try {
  const flowId = await client.start('triage', input);
  console.error(`started ${flowId}`);
  const done = await client.done(flowId);
  console.log(JSON.stringify({ flowId, status: done.status, ...done.output?.result }, null, 2));
  process.exitCode = done.status === 'done' ? 0 : 1;
} finally {
  await client.close();
}
