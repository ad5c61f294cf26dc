import { mkdtemp, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { fromPromise } from 'xstate';
import { FlowStopError } from '../src/contracts/flowStop.js';
import type { MicrotaskInput, MicrotaskResult } from '../src/contracts/microtask.js';
import { FlowHost } from '../src/flowHost.js';
import { provideFlows } from '../src/flows.js';
import { silentLogger } from '../src/log.js';
import { LmdbSnapshotStore } from '../src/persistence/LmdbSnapshotStore.js';
import { LmdbStore } from '../src/persistence/LmdbStore.js';

describe('a cause no fallback helps', () => {
  it('ends the flow failed at once with that cause: no fallback, no other call, the one line kept', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'stop-'));
    const store = await LmdbSnapshotStore.open(await LmdbStore.open(dir));
    let calls = 0;
    const microtask = fromPromise<MicrotaskResult, MicrotaskInput>(async () => {
      calls++;
      throw new FlowStopError('MODEL_AUTH', 'the API key was refused (401); check ANTHROPIC_API_KEY');
    });
    const host = new FlowHost({ flows: provideFlows({ microtask }), store, logger: silentLogger, outRoot: dir });
    const input = JSON.parse(await readFile(new URL('../examples/feedback-loop.json', import.meta.url), 'utf8'));
    const flowId = await host.start('feedback-loop', input);
    const record = (await host.finished(flowId))!;
    expect(record.status).toBe('failed');
    expect(record.error).toEqual({ code: 'MODEL_AUTH', message: 'the API key was refused (401); check ANTHROPIC_API_KEY' });
    expect(record.output).toBeUndefined();
    expect(calls).toBe(1);
    expect((await store.load(flowId))!.record).toMatchObject({ status: 'failed', error: { code: 'MODEL_AUTH' } });
  });
});
