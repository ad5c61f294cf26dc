import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { assign, setup } from 'xstate';
import { z } from 'zod';
import { defineFlow } from '../src/flowCatalog.js';
import { FlowHost } from '../src/flowHost.js';
import { provideFlows } from '../src/flows.js';
import { silentLogger } from '../src/log.js';
import { LmdbSnapshotStore } from '../src/persistence/LmdbSnapshotStore.js';
import { LmdbStore } from '../src/persistence/LmdbStore.js';
import { scripted } from './support/flows.js';

/** A user's flow whose wait takes any data. */
const takesAnything = defineFlow({
  name: 'takes-anything',
  version: 1,
  input: z.object({ key: z.string().optional() }),
  machine: () =>
    setup({}).createMachine({
      id: 'takes-anything',
      context: { got: null as unknown },
      initial: 'waiting',
      states: {
        waiting: {
          meta: { wait: { for: 'data', events: { give: z.object({ payload: z.unknown() }) } } },
          on: { give: { target: 'done', actions: assign({ got: ({ event }) => (event as { data?: { payload?: unknown } }).data?.payload ?? null }) } },
        },
        done: { type: 'final' },
      },
      output: ({ context }) => ({ status: 'done', result: context.got }),
    }),
});

const dirs: string[] = [];
afterAll(async () => {
  await LmdbStore.closeAll();
  await Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true })));
});

describe('an event sent to a flow this host runs', () => {
  it('is refused (INVALID_EVENT) when its data nests deeper than 64 levels, and the flow takes a later one', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'send-depth-'));
    dirs.push(dir);
    const store = await LmdbSnapshotStore.open(await LmdbStore.open(dir));
    const runtime = scripted(() => ({ text: 'x' }));
    const host = new FlowHost({ flows: provideFlows({ microtask: runtime.microtask }, [takesAnything]), store, logger: silentLogger, outRoot: dir, keptEvents: async () => [] });
    const flowId = await host.start('takes-anything', {});
    await new Promise((resolve) => setTimeout(resolve, 100));
    // XState copies a context recursively: nested 20,000 deep, the transition overflowed the
    // stack half-way, after the event was counted as received, and the flow refused every later one.
    let deep: unknown = 1;
    for (let i = 0; i < 20_000; i++) deep = [deep];
    await expect(host.send(flowId, { eventId: 'e-deep', type: 'give', data: { payload: deep } })).rejects.toMatchObject({ code: 'INVALID_EVENT' });
    expect(await host.send(flowId, { eventId: 'e-good', type: 'give', data: { payload: { ok: 1 } } })).toBe('applied');
    const record = await host.finished(flowId);
    expect(record?.status).toBe('done');
    expect(record?.output).toMatchObject({ result: { ok: 1 } });
    await host.stop();
  });
});
