import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { checkModule, checkTool, closeToolChecks } from '../src/actors/toolCheck.js';
import type { ToolSpec } from '../src/contracts/toolSpec.js';

// Generated code is run only in the sandbox, but it is type-checked outside it, by the
// TypeScript compiler on this host's file system. A module that imports a host file, or
// names it in a type (`import('/path/config.js')`), had the compiler read it, and the
// diagnostics quote what it holds: `Type '1' is not assignable to type '"<the secret>"'`.
// The diagnostics go into the verifier's prompt (to the model), the journal and the snapshot.

const SECRET = `host-secret-${randomBytes(8).toString('hex')}`;
const spec: ToolSpec = { name: 'reader', description: 'reads', modules: [{ name: 'leak', purpose: 'leaks' }] };
let dir: string;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'type-check-reads-'));
  // Files a host may hold: a program's configuration, its declarations, its TypeScript.
  await writeFile(join(dir, 'config.js'), `export const apiKey = ${JSON.stringify(SECRET)};\n`);
  await writeFile(join(dir, 'types.d.ts'), `export declare const apiKey: ${JSON.stringify(SECRET)};\n`);
  await writeFile(join(dir, 'global.d.ts'), `declare const hostApiKey: ${JSON.stringify(SECRET)};\n`);
  await writeFile(join(dir, 'settings.ts'), `export const apiKey = ${JSON.stringify(SECRET)} as const;\n`);
});

afterAll(async () => {
  await closeToolChecks();
  if (dir) await rm(dir, { recursive: true, force: true });
});

const attacks = () => ({
  'a type import': `/** @type {import(${JSON.stringify(join(dir, 'config.js'))})['apiKey']} */\nexport let v = 1;\n`,
  'an import': `import { apiKey } from ${JSON.stringify(join(dir, 'config.js'))};\n/** @type {1} */\nexport const v = apiKey;\n`,
  'a relative import up the tree': `import { apiKey } from '${'../'.repeat(12)}${dir.slice(1)}/settings.js';\n/** @type {1} */\nexport const v = apiKey;\n`,
  'a reference': `/// <reference path=${JSON.stringify(join(dir, 'global.d.ts'))} />\n/** @type {1} */\nexport const v = hostApiKey;\n`,
  'a declaration file': `/** @type {import(${JSON.stringify(join(dir, 'types.js'))})['apiKey']} */\nexport let v = 1;\n`,
});
const ATTACKS = ['a type import', 'an import', 'a relative import up the tree', 'a reference', 'a declaration file'] as const;

describe('the type-check reads no file of the host but the compiler\'s and Node\'s declarations', () => {
  it.each(ATTACKS)('a module that names a host file in %s learns nothing of it', async (name) => {
    const code = attacks()[name];
    const module = await checkModule(spec, 'leak', code);
    expect(module.diagnostics.join('\n')).not.toContain(SECRET);
    // It is an error still: the file does not exist as far as the check knows.
    expect(module.ok).toBe(false);
    const tool = await checkTool(spec, { 'package.json': '{"type":"module"}\n', 'src/leak.js': code, 'src/cli.js': "import './leak.js';\nconsole.log('usage');\n" });
    expect(tool.diagnostics.join('\n')).not.toContain(SECRET);
  });

  it("still type-checks Node's built-ins and the tool's own modules", async () => {
    const code = "import { readFileSync } from 'node:fs';\nimport http from 'http';\n/** @param {string} p */\nexport const read = (p) => readFileSync(p, 'utf8').length + typeof http.createServer + new URL('http://a').href;\nexport const wrong = readFileSync(1, 2, 3);\n";
    const module = await checkModule(spec, 'leak', code);
    expect(module.diagnostics).toHaveLength(1);
    expect(module.diagnostics[0]).toMatch(/^src\/leak\.js:5:\d+ TS2554: Expected 1-2 arguments, but got 3\./);
  });
});
