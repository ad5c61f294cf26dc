import { mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { AnthropicModel } from '../src/actors/model/AnthropicModel.js';
import { CassetteError, CassetteRecorder, CassetteReplayModel, loadCassette } from '../src/actors/model/CassetteModel.js';
import { ModelError } from '../src/actors/model/ModelError.js';
import { ScriptedModel } from '../src/actors/model/ScriptedModel.js';
import { reply, startFakeAnthropic } from '../src/testing/fakeAnthropic.js';

const Verdict = z.object({ score: z.number(), feedback: z.string() });
const tempFile = async (name: string) => join(await mkdtemp(join(tmpdir(), 'cassette-')), name);

describe('the cassette model', () => {
  it('records real SDK calls over HTTP and replays them offline, with the server gone', async () => {
    const path = await tempFile('recorded.json');
    const server = await startFakeAnthropic({
      replies: [reply.text('Paris'), reply.tool('answer', { score: 0.5, feedback: 'meh' })],
    });
    const recorder = new CassetteRecorder(new AnthropicModel({ apiKey: 'k', baseURL: server.url, model: 'claude-x' }), path);
    const live1 = await recorder.call({ system: 's', prompt: 'capital?' });
    const live2 = await recorder.call({ system: 's', prompt: 'rate', schema: Verdict });
    await server.close();

    const replay = await CassetteReplayModel.fromFile(path);
    expect(await replay.call({ system: 's', prompt: 'rate', schema: Verdict })).toEqual(live2);
    expect(await replay.call({ system: 's', prompt: 'capital?' })).toEqual(live1);
    expect((await loadCassette(path)).source).toBe('recorded from anthropic');
  });

  it('replays the n-th occurrence of a request with the n-th answer, then the last again', async () => {
    const path = await tempFile('seq.json');
    const recorder = new CassetteRecorder(new ScriptedModel(['one', 'two']), path);
    await recorder.call({ system: 's', prompt: 'again' });
    await recorder.call({ system: 's', prompt: 'again' });
    const replay = await CassetteReplayModel.fromFile(path);
    const texts = [];
    for (let i = 0; i < 3; i++) texts.push((await replay.call({ system: 's', prompt: 'again' })).value);
    expect(texts).toEqual(['one', 'two', 'two']);
  });

  it('fails a request that was never recorded as cassette_miss', async () => {
    const replay = new CassetteReplayModel({ version: 1, source: 'hand-written', entries: [] }, 'empty.json');
    const error = await replay.call({ system: 's', prompt: 'unknown' }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ModelError);
    expect((error as ModelError).kind).toBe('cassette_miss');
    expect((error as ModelError).message).toContain('MICROTASK_RECORD');
  });

  it('names a missed prompt in one short line, its newlines escaped, whatever the prompt holds', async () => {
    const replay = new CassetteReplayModel({ version: 1, source: 'hand-written', entries: [] }, 'empty.json');
    const prompt = `Write the release-note entry from the input.\n\nThe "input" is\r\n${'long '.repeat(200)}`;
    const error = (await replay.call({ system: 's', prompt }).catch((e: unknown) => e)) as ModelError;
    expect(error.kind).toBe('cassette_miss');
    expect(error.message).not.toMatch(/[\n\r]/);
    expect(error.message).toContain('prompt "Write the release-note entry from the input.\\n\\nThe \\"input\\" is"…); record it');
    expect(error.message.length).toBeLessThan(200);
    const short = (await replay.call({ system: 's', prompt: 'two\nlines "quoted"' }).catch((e: unknown) => e)) as ModelError;
    expect(short.message).toContain('prompt "two\\nlines \\"quoted\\""); record it');
    // Cut between code points: no half of an emoji, which JSON would show as \ud83d.
    const emoji = (await replay.call({ system: 's', prompt: `a${'😀'.repeat(100)}` }).catch((e: unknown) => e)) as ModelError;
    expect(emoji.message).toContain(`prompt "a${'😀'.repeat(59)}"…)`);
  });

  it('refuses a corrupt cassette with a clear error', async () => {
    const path = await tempFile('bad.json');
    await writeFile(path, '{"version": 1, "entries": [{"key": 3}]');
    await expect(loadCassette(path)).rejects.toThrow(/not JSON/);
    await writeFile(path, '{"version": 1, "source": "x", "entries": [{"key": 3}]}');
    const error = await loadCassette(path).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(CassetteError);
    expect((error as CassetteError).code).toBe('CASSETTE_INVALID');
    expect((error as CassetteError).message).toMatch(/entries\.0\.key/);
  });

  it('writes the cassette after every call, so a crash loses at most the call in flight', async () => {
    const path = await tempFile('incremental.json');
    const recorder = new CassetteRecorder(new ScriptedModel(['a', 'b']), path);
    await recorder.call({ system: 's', prompt: '1' });
    expect(JSON.parse(await readFile(path, 'utf8')).entries).toHaveLength(1);
    await recorder.call({ system: 's', prompt: '2' });
    expect(JSON.parse(await readFile(path, 'utf8')).entries).toHaveLength(2);
  });
});

describe('the scripted model', () => {
  it('answers from a function of the request and validates structured answers', async () => {
    const model = new ScriptedModel((request) => (request.prompt === 'rate' ? { value: { score: 1, feedback: 'x' } } : 'text'));
    expect((await model.call({ system: 's', prompt: 'rate', schema: Verdict })).value).toEqual({ score: 1, feedback: 'x' });
    expect((await model.call({ system: 's', prompt: 'other' })).value).toBe('text');
    const bad = new ScriptedModel([{ value: { score: 'no' } }]);
    await expect(bad.call({ system: 's', prompt: 'rate', schema: Verdict })).rejects.toMatchObject({ kind: 'invalid_output' });
  });

  it('says when its script has run out', async () => {
    const model = new ScriptedModel([]);
    await expect(model.call({ system: 's', prompt: 'p' })).rejects.toThrow(/no answer scripted for call #0/);
  });
});
