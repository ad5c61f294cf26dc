import { describe, expect, it } from 'vitest';
import { createActor, toPromise } from 'xstate';
import { codeOnlyRepairLogic } from '../src/actors/toolBuilderActors.js';

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
