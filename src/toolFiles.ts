import type { ToolSpec } from './contracts/toolSpec.js';

/** The files of a built tool, by path relative to the tool's directory. */
export type ToolFiles = Record<string, string>;

export const modulePath = (name: string) => `src/${name}.js`;
export const ENTRY_PATH = 'src/cli.js';

/** The source without its first line when that is a shebang (`#!...`). */
const withoutShebang = (source: string) => (source.startsWith('#!') ? source.slice(source.indexOf('\n') + 1 || source.length) : source);

/**
 * Lays out a tool: package.json (written by code, never by a model: its bin and
 * `type: module` must be right), one source file per module, the entry, the README.
 */
export function renderToolFiles(
  spec: ToolSpec,
  modules: Readonly<Record<string, string>>,
  entry: { entry: string; readme: string },
): ToolFiles {
  const files: ToolFiles = {
    'package.json': `${JSON.stringify(
      {
        name: spec.name,
        version: '0.1.0',
        description: spec.description,
        type: 'module',
        bin: { [spec.name]: ENTRY_PATH },
        engines: { node: '>=20' },
        license: 'UNLICENSED',
        private: true,
      },
      null,
      2,
    )}\n`,
    'README.md': entry.readme.endsWith('\n') ? entry.readme : `${entry.readme}\n`,
    // A bin needs its shebang; models forget it, and it is not theirs to decide: one of
    // theirs would run the file with what the sandboxed --help check never ran (it runs
    // node), a shell or node with its debugger open. Theirs is replaced.
    [ENTRY_PATH]: `#!/usr/bin/env node\n${withoutShebang(entry.entry)}`,
  };
  for (const module of spec.modules) {
    const code = modules[module.name];
    if (code !== undefined) files[modulePath(module.name)] = code;
  }
  return files;
}
