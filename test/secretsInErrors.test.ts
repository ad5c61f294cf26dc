import { mkdtemp, readdir, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { CircuitBreaker } from '../src/actors/CircuitBreaker.js';
import { createMicrotaskLogic, MicrotaskRunner } from '../src/actors/microtask.js';
import type { MicrotaskResult } from '../src/contracts/microtask.js';
import type { ModelPort } from '../src/actors/model/ModelPort.js';
import { MemoryResultsStore, type ResultsStore } from '../src/actors/ResultsStore.js';
import { MemoryBus } from './support/MemoryBus.js';
import { Daemon } from '../src/daemon/Daemon.js';
import { FlowHost } from '../src/flowHost.js';
import { provideFlows } from '../src/flows.js';
import { FileJournal } from '../src/journal/FileJournal.js';
import { createLogger } from '../src/log.js';
import { answerSchemas } from '../src/contracts/answers.js';
import { FileSnapshotStore } from '../src/persistence/FileSnapshotStore.js';
import { StoreUnavailableError } from '../src/persistence/StoreUnavailableError.js';
import { addSecrets } from '../src/secrets.js';

// Issue 11: secrets were scrubbed from ModelError messages only. An error of another kind
// (thrown by an SDK or a client library below the model port, or by a store) that quotes a
// configured secret went verbatim into the result, the snapshot, the journal, the answer.
const SECRET = 'gw-pass-5c81e07d93'; // not shaped like a key: scrubbed because it is configured
addSecrets(SECRET);

async function filesUnder(dir: string): Promise<string> {
  let text = '';
  for (const entry of await readdir(dir, { recursive: true, withFileTypes: true })) {
    if (entry.isFile()) text += await readFile(join(entry.parentPath, entry.name), 'utf8');
  }
  return text;
}

/** A flow host as the CLI wires it, on files, with the log captured. */
async function hostWith(model: ModelPort, results: ResultsStore) {
  const dir = await mkdtemp(join(tmpdir(), 'secrets-'));
  const lines: string[] = [];
  const logger = createLogger('debug', new Writable({ write: (chunk: Buffer, _e, done) => (lines.push(chunk.toString()), done()) }));
  const runner = new MicrotaskRunner({ model, results, answers: answerSchemas, breaker: new CircuitBreaker(0), logger, storeRetryMs: 300 });
  const journal = new FileJournal({ dir: join(dir, 'journal') });
  const host = new FlowHost({
    flows: provideFlows({ microtask: createMicrotaskLogic(runner) }),
    store: await FileSnapshotStore.open(join(dir, 'flows')),
    journal,
    logger,
    outRoot: dir,
  });
  const run = async () => {
    const flowId = await host.start('microtask', { taskType: 'summarize', system: 's', prompt: 'p', timeoutMs: 1_000 });
    const record = await host.finished(flowId)!;
    await host.stop();
    await journal.flush();
    return record;
  };
  return { dir, lines, run };
}

describe('a configured secret in an error that is not a ModelError (issue 11)', () => {
  it('thrown by the layer under the model port: not in the result, the snapshot, the journal or the log', async () => {
    const model: ModelPort = {
      name: 'failing',
      call: async () => {
        throw new TypeError(`fetch failed: proxy https://svc:${SECRET}@proxy.internal refused (token ${SECRET})`);
      },
    };
    const { dir, lines, run } = await hostWith(model, new MemoryResultsStore());
    const record = await run();
    const result = (record.snapshot as { context?: { envelope?: MicrotaskResult } }).context?.envelope;
    expect(result?.error).toMatchObject({ kind: 'unknown' });
    expect(result?.error?.message).toContain('fetch failed: proxy https://svc:[redacted]@proxy.internal refused (token [redacted])');
    const everything = JSON.stringify(record) + (await filesUnder(dir)) + lines.join('');
    expect(everything).toContain('fetch failed');
    expect(everything).not.toContain(SECRET);
  });

  it('thrown by the results store: not in the error the flow stops with, its record, the journal or the log', async () => {
    const model: ModelPort = { name: 'unused', call: async () => ({ value: 'x', text: 'x', usage: { inputTokens: 1, outputTokens: 1, cacheCreationInputTokens: 0, cacheReadInputTokens: 0, calls: 1 }, model: 'm', stopReason: 'end_turn' }) as never };
    const results: ResultsStore = {
      get: async () => {
        throw new Error(`Authorization Violation: user svc password ${SECRET}`);
      },
      put: async () => undefined,
    } as unknown as ResultsStore;
    const { dir, lines, run } = await hostWith(model, results);
    const record = await run();
    expect(record.error?.code).toBe('STORE_UNAVAILABLE');
    expect(record.error?.message).toContain('Authorization Violation: user svc password [redacted]');
    const everything = JSON.stringify(record) + (await filesUnder(dir)) + lines.join('');
    expect(everything).not.toContain(SECRET);
  });

  it('thrown by the bus while the daemon answers a request: not in the INTERNAL answer', async () => {
    const bus = new MemoryBus();
    // The bucket of request ids fails as a NATS client may, quoting its URL and token.
    const failing = new Proxy(bus, {
      get: (target, name, receiver) =>
        name === 'keyValue'
          ? async (bucket: string) => {
              const kv = await target.keyValue(bucket);
              return Object.assign(Object.create(kv) as object, {
                create: async () => {
                  throw new Error(`connection refused by nats://svc:${SECRET}@10.0.0.5:4222 (token ${SECRET})`);
                },
              });
            }
          : Reflect.get(target, name, receiver),
    });
    const runner = new MicrotaskRunner({ model: { name: 'unused', call: async () => Promise.reject(new Error('unused')) }, results: new MemoryResultsStore() });
    const daemon = new Daemon({
      bus: failing,
      flows: provideFlows({ microtask: createMicrotaskLogic(runner) }),
      store: await FileSnapshotStore.open(await mkdtemp(join(tmpdir(), 'secrets-daemon-'))),
      logger: createLogger('silent'),
      outRoot: tmpdir(),
    });
    await daemon.start();
    try {
      const request = JSON.stringify({ requestId: 'r-1', input: { taskType: 'summarize', system: 's', prompt: 'p' } });
      const answer = new TextDecoder().decode((await bus.request('microtask.flow.start.microtask', request, { timeoutMs: 5_000 })).data);
      expect(JSON.parse(answer)).toMatchObject({ ok: false, error: { code: 'INTERNAL' } });
      expect(answer).toContain('connection refused by nats://svc:[redacted]@10.0.0.5:4222 (token [redacted])');
      expect(answer).not.toContain(SECRET);
    } finally {
      await daemon.stop();
      await bus.close();
    }
  });

  it('a StoreUnavailableError made from any message is scrubbed as it is made', () => {
    expect(new StoreUnavailableError(`could not save flow f: nats://svc:${SECRET}@host: refused`).message).toBe('could not save flow f: nats://svc:[redacted]@host: refused');
  });
});
