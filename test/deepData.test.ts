import { mkdtemp } from 'node:fs/promises';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { MicrotaskRunner } from '../src/actors/microtask.js';
import { AnthropicModel } from '../src/actors/model/AnthropicModel.js';
import { ScriptedModel } from '../src/actors/model/ScriptedModel.js';
import { MemoryResultsStore } from '../src/actors/ResultsStore.js';
import { MemoryBus } from './support/MemoryBus.js';
import { MAX_ANSWER_DEPTH } from '../src/jsonInput.js';
import { FileSnapshotStore } from '../src/persistence/FileSnapshotStore.js';
import { checkRecordForSave, findNonJson, InvalidSnapshotError, MAX_RECORD_DEPTH, type FlowSnapshotRecord } from '../src/persistence/SnapshotStore.js';
import { startWorker } from '../src/worker.js';

// Issue 11: data nested 100,000 deep (a model's structured answer, a task put on the queue
// by any client) overflowed the stack of the recursive check run before every save,
// failing as a RangeError instead of saying what is wrong with the record.
const nested = (levels: number, leaf: unknown = 'leaf'): unknown => {
  let value: unknown = leaf;
  // The outermost level is an object: paths read `.a[0].a[0]…`.
  for (let i = 0; i < levels; i++) value = (levels - 1 - i) % 2 ? [value] : { a: value };
  return value;
};

const record = (output: unknown): FlowSnapshotRecord => ({
  flowId: 'flow-deep',
  pattern: 'microtask',
  machineId: 'microtask',
  machineVersion: 1,
  status: 'done',
  state: 'done',
  updatedAt: new Date().toISOString(),
  snapshot: { status: 'done' },
  output,
});

describe('deeply nested data in a record', () => {
  it('100,000 levels: findNonJson says it nests too deep, without overflowing the stack', () => {
    const problem = findNonJson(record(nested(100_000)));
    expect(problem).toMatch(new RegExp(`^record\\.output\\.a\\[0\\]\\.a.*….* nests deeper than ${MAX_RECORD_DEPTH} levels of arrays and objects`));
    expect(problem!.length).toBeLessThan(400);
    // Just within the limit is JSON data.
    expect(findNonJson(nested(MAX_RECORD_DEPTH - 1))).toBeUndefined();
    expect(() => JSON.stringify(nested(MAX_RECORD_DEPTH))).not.toThrow();
  });

  it('a store refuses such a record with SNAPSHOT_INVALID, storing nothing', async () => {
    expect(() => checkRecordForSave(record(nested(100_000)))).toThrow(InvalidSnapshotError);
    const store = await FileSnapshotStore.open(await mkdtemp(join(tmpdir(), 'deep-')));
    await expect(store.save(record(nested(100_000)), null)).rejects.toMatchObject({ code: 'SNAPSHOT_INVALID' });
    expect(await store.load('flow-deep')).toBeUndefined();
  });

  it('still finds the first problem, with its path, anywhere in a deep record', () => {
    const cyclic: Record<string, unknown> = { name: 'c' };
    cyclic.self = { back: cyclic };
    expect(findNonJson(record({ list: [1, { ok: true }, cyclic] }))).toBe('record.output.list[2].self.back refers back to itself');
    const shared = { same: 1 };
    expect(findNonJson(record({ one: shared, two: shared }))).toBeUndefined();
    expect(findNonJson(record({ deep: nested(500, new Map()) }))).toMatch(/^record\.output\.deep\.a\[0\]\.a.* is a Map$/);
    expect(findNonJson(record({ first: [1, undefined], second: Number.NaN }))).toBe('record.output.first[1] is undefined (JSON writes null in an array)');
    expect(findNonJson(record({ skipped: undefined, n: Infinity }))).toBe('record.output.n is Infinity (JSON writes null)');
  });
});

describe('findNonJson: the quick check and the walk that names the place agree', () => {
  // Plain records are vouched for by a quick recursive check that goes 200 levels deep;
  // anything else is walked again for its place. Each case below, near and past that depth.
  it('finds each kind of problem at any depth, and passes plain data of any depth within the limit', () => {
    class Point {
      x = 1;
    }
    const problems: Array<[unknown, RegExp]> = [
      [new Date(0), / is a Date$/],
      [new Point(), / is a Point$/],
      [new Map(), / is a Map$/],
      [() => 1, / is a function$/],
      [Symbol('s'), / is a symbol$/],
      [1n, / is a bigint$/],
      [Number.NaN, / is NaN \(JSON writes null\)$/],
      [-Infinity, / is -Infinity \(JSON writes null\)$/],
      [[1, undefined], /\[1\] is undefined/],
      // A hole reads as undefined: JSON writes null there.
      [[1, , 3], /\[1\] is undefined/],
    ];
    for (const depth of [0, 1, 198, 199, 200, 201, 202, 500, MAX_RECORD_DEPTH - 3]) {
      for (const [bad, message] of problems) expect(findNonJson(nested(depth, { bad }), 'v'), `depth ${depth}`).toMatch(message);
      expect(findNonJson(nested(depth, { fine: [1, 'two', null, true, { n: 0 }], skipped: undefined }), 'v'), `depth ${depth}`).toBeUndefined();
      expect(findNonJson(nested(depth, Object.assign(Object.create(null) as object, { a: 1 })), 'v')).toBeUndefined();
      const cyclic: Record<string, unknown> = {};
      cyclic.again = [cyclic];
      expect(findNonJson(nested(depth, cyclic), 'v')).toMatch(/\.again\[0\] refers back to itself$/);
    }
    // Too deep, whether the quick check's limit is below the one asked for or above it.
    expect(findNonJson(nested(50), 'v', 40)).toMatch(/nests deeper than 40 levels/);
    expect(findNonJson(nested(39), 'v', 40)).toBeUndefined();
    expect(findNonJson(nested(MAX_RECORD_DEPTH + 1), 'v')).toMatch(new RegExp(`nests deeper than ${MAX_RECORD_DEPTH} levels`));
    // The first problem in document order is the one named, on either side of the quick check's depth.
    expect(findNonJson({ a: nested(300, new Date(0)), b: Number.NaN }, 'v')).toMatch(/ is a Date$/);
    expect(findNonJson({ a: nested(300, 'ok'), b: Number.NaN }, 'v')).toBe('v.b is NaN (JSON writes null)');
  });
});

describe('a model answer nested deeper than a record can hold', () => {
  it('is invalid_output (paid, counted, kept under its key), not an internal error (the real SDK)', async () => {
    // Written by hand: JSON.stringify cannot write it, which is the point.
    const answer = `{"value":${'{"a":'.repeat(100_000)}1${'}'.repeat(100_000)}}`;
    const server = createServer((request, response) => {
      request.resume();
      request.on('end', () => {
        response.writeHead(200, { 'content-type': 'application/json', 'request-id': 'req_deep' });
        response.end(
          `{"id":"msg_1","type":"message","role":"assistant","model":"m","stop_reason":"tool_use","stop_sequence":null,` +
            `"usage":{"input_tokens":5,"output_tokens":7},"content":[{"type":"tool_use","id":"toolu_1","name":"anything","input":${answer}}]}`,
        );
      });
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    try {
      const { port } = server.address() as AddressInfo;
      const model = new AnthropicModel({ apiKey: 'k', baseURL: `http://127.0.0.1:${port}`, model: 'm', maxRetries: 0 });
      const results = new MemoryResultsStore();
      const runner = new MicrotaskRunner({ model, results, answers: { anything: z.unknown() } });
      const result = await runner.run({ taskType: 'extract', key: 'flow-deep/x', system: 's', prompt: 'p', answer: 'anything' });
      expect(result.error).toMatchObject({ kind: 'invalid_output', retryable: false });
      expect(result.error?.message).toContain(`nests deeper than ${MAX_ANSWER_DEPTH} levels`);
      expect(result.usage).toMatchObject({ calls: 1, inputTokens: 5, outputTokens: 7 });
      expect(await results.get('flow-deep/x')).toMatchObject({ error: { kind: 'invalid_output' } });
    } finally {
      server.close();
    }
  });
});

describe('a worker reading a task nested 100,000 deep', () => {
  it('dead-letters it as too deep, without a model call', async () => {
    const bus = new MemoryBus();
    const queue = await bus.workQueue('tasks', { ackWaitMs: 60_000, maxDeliver: 2, deadLetterSubject: 'dead' });
    const dead: string[] = [];
    await bus.subscribe('dead', (m) => void dead.push(new TextDecoder().decode(m.data)));
    const model = new ScriptedModel(['never']);
    const results = new MemoryResultsStore();
    const worker = await startWorker({ queue, results, concurrency: 1, runner: new MicrotaskRunner({ model, results }) });
    const text = JSON.stringify({ taskType: 'summarize', key: 'flow-deep/t', system: 's', prompt: 'p', deadlineAt: Date.now() + 60_000 }).replace(/}$/, `,"data":${'['.repeat(100_000)}${']'.repeat(100_000)}}`);
    await queue.enqueue('deep', text);
    for (let i = 0; i < 200 && dead.length === 0; i++) await new Promise((r) => setTimeout(r, 10));
    await worker.stop();
    await bus.close();
    expect(dead.join('\n')).toMatch(/nested deeper than \d+ levels/);
    expect(model.calls).toHaveLength(0);
  });
});
