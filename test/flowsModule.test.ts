import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { FlowsModuleError, loadFlowsModule } from '../src/flowsModule.js';

/**
 * The loader of `--flows`: real modules written to a temporary directory and imported as
 * the CLI imports them (test/ownFlow.test.ts runs them through the installed bin).
 */
let dir: string;
const flow = `{ name: 'echo', version: 1, input: { safeParse: (v) => ({ success: true, data: v }) }, machine: () => ({ provide() { return this; } }) }`;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'flows-module-'));
  const files: Record<string, string> = {
    'named.mjs': `export const flows = [${flow}]; export const answers = { echoed: { safeParse() {} } }; export const fallbacks = { echo: () => 'none' };`,
    'default.mjs': `export default { flows: [${flow}] };`,
    'common.cjs': `module.exports = { flows: [${flow}] };`,
    'builtinAnswer.mjs': `export const flows = [${flow}]; export const answers = { verdict: { safeParse() {} } };`,
    'notSchema.mjs': `export const flows = [${flow}]; export const answers = { echoed: {} };`,
    'badFallback.mjs': `export const flows = [${flow}]; export const fallbacks = { echo: 'none' };`,
    'twice.mjs': `export const flows = [${flow}, ${flow}];`,
    'version.mjs': `export const flows = [{ ...${flow}, version: 0 }];`,
    'machineThrows.mjs': `export const flows = [{ ...${flow}, machine: () => { throw new Error('no blocks.patterns.nope') } }];`,
  };
  for (const [name, text] of Object.entries(files)) await writeFile(join(dir, name), text);
});

const refusal = (file: string) =>
  loadFlowsModule(file, dir).then(
    () => undefined,
    (e: unknown) => e as FlowsModuleError,
  );

describe('loadFlowsModule', () => {
  it('reads flows, answer schemas and fallbacks from named exports, a default export or CommonJS, the path from the given directory', async () => {
    const named = await loadFlowsModule('./named.mjs', dir);
    expect(named.flows.map((f) => f.name)).toEqual(['echo']);
    expect(Object.keys(named.answers ?? {})).toEqual(['echoed']);
    expect(named.fallbacks?.echo?.({ taskType: 'echo', key: 'k', system: '', prompt: '' }, { kind: 'timeout', message: '', retryable: true })).toBe('none');
    expect((await loadFlowsModule('default.mjs', dir)).flows).toHaveLength(1);
    expect((await loadFlowsModule(join(dir, 'common.cjs'))).flows).toHaveLength(1);
  });

  it('refuses what is wrong with one line that ends with its code', async () => {
    const cases: Array<[string, string, RegExp]> = [
      ['missing.mjs', 'FLOWS_MODULE_NOT_FOUND', /^--flows missing\.mjs: no such file \(looked for \S+missing\.mjs\) \(FLOWS_MODULE_NOT_FOUND\)$/],
      ['builtinAnswer.mjs', 'INVALID_FLOWS_MODULE', /answers\.verdict: "verdict" is a built-in answer schema/],
      ['notSchema.mjs', 'INVALID_FLOWS_MODULE', /answers\.echoed is not a zod schema/],
      ['badFallback.mjs', 'INVALID_FLOWS_MODULE', /fallbacks\.echo must be a function/],
      ['twice.mjs', 'INVALID_FLOW_DEFINITION', /flow "echo" is defined twice/],
      ['version.mjs', 'INVALID_FLOW_DEFINITION', /version must be a whole number from 1/],
      ['machineThrows.mjs', 'INVALID_FLOW_DEFINITION', /building a flow's machine failed: no blocks\.patterns\.nope/],
    ];
    for (const [file, code, message] of cases) {
      const e = await refusal(file);
      expect(e, file).toBeInstanceOf(FlowsModuleError);
      expect(e!.code, file).toBe(code);
      expect(e!.message, file).toMatch(message);
      expect(e!.message, file).not.toContain('\n');
      expect(e!.message.endsWith(`(${code})`), file).toBe(true);
    }
  });
});
