import { builtinModules, createRequire } from 'node:module';
import { dirname } from 'node:path';
import type ts from 'typescript';
import { ENTRY_PATH, modulePath, type ToolFiles } from '../toolFiles.js';
import type { ToolSpec } from '../contracts/toolSpec.js';

/**
 * The TypeScript compiler's part of the tool builder's checks, run in a worker thread
 * (src/actors/toolCheck.ts keeps the pool): a type-check takes tens to hundreds of
 * milliseconds of CPU, and on the daemon's event loop it held up every KV request and
 * lease renewal behind it. Each thread loads the compiler and parses lib.d.ts and
 * @types/node once, then reuses them for every check it runs.
 */

export type TypeCheckTask =
  | { kind: 'module'; spec: ToolSpec; module: string; code: string }
  | { kind: 'tool'; spec: ToolSpec; files: ToolFiles };

const ROOT = '/__tool__';
const require = createRequire(import.meta.url);
const typesNodeJson = require.resolve('@types/node/package.json');
const typeRoots = [dirname(dirname(typesNodeJson))];

/**
 * The only directories of this host the compiler may read: its own lib files, @types/node
 * and the undici-types it refers to. Generated code is type-checked outside the sandbox: a
 * module that named any other file (`import('/srv/app/config.js')`, `/// <reference
 * path>`) had it read, and the diagnostics quoted it (`Type '1' is not assignable to type
 * '"<its secret>"'`) into the verifier's prompt, the journal and the snapshot.
 */
const readableDirs = (() => {
  const dirs = [dirname(require.resolve('typescript/lib/lib.d.ts')), dirname(typesNodeJson)];
  try {
    dirs.push(dirname(createRequire(typesNodeJson).resolve('undici-types/package.json')));
  } catch {
    // an @types/node without it: nothing more to read
  }
  return dirs.map((dir) => `${dir}/`);
})();
const readable = (path: string) => readableDirs.some((dir) => path.startsWith(dir)) && !path.split('/').includes('..');

// The compiler is 9 MB of CommonJS: loaded on a thread's first check.
let typescript: typeof ts | undefined;
let compilerOptions: ts.CompilerOptions;
async function loadTypeScript(): Promise<typeof ts> {
  if (!typescript) {
    typescript = (await import('typescript')).default;
    compilerOptions = {
      allowJs: true,
      checkJs: true,
      noEmit: true,
      target: typescript.ScriptTarget.ES2022,
      module: typescript.ModuleKind.NodeNext,
      moduleResolution: typescript.ModuleResolutionKind.NodeNext,
      types: ['node'],
      typeRoots,
      skipLibCheck: true,
      strict: false,
    };
  }
  return typescript;
}

// lib.d.ts and @types/node are the same for every check: parse them once per thread.
const libCache = new Map<string, ts.SourceFile>();

function typeCheck(ts: typeof import('typescript'), files: ToolFiles): { diagnostics: string[]; program: ts.Program } {
  const host = ts.createCompilerHost(compilerOptions, true);
  const virtual = new Map(Object.entries(files).map(([path, text]) => [`${ROOT}/${path}`, text]));
  const original = {
    getSourceFile: host.getSourceFile,
    fileExists: host.fileExists,
    readFile: host.readFile,
    directoryExists: host.directoryExists?.bind(host),
  };
  // The tool's files are virtual; of the host, only the declarations in readableDirs exist.
  host.directoryExists = (dir) =>
    dir === ROOT || dir.startsWith(`${ROOT}/`)
      ? [...virtual.keys()].some((name) => name.startsWith(`${dir}/`))
      : readableDirs.some((readableDir) => readableDir.startsWith(`${dir}/`) || `${dir}/`.startsWith(readableDir)) && (original.directoryExists?.(dir) ?? true);
  host.realpath = (path) => path;
  host.fileExists = (name) => virtual.has(name) || (readable(name) && original.fileExists(name));
  host.readFile = (name) => virtual.get(name) ?? (readable(name) ? original.readFile(name) : undefined);
  host.getSourceFile = (name, languageVersion, onError) => {
    const text = virtual.get(name);
    if (text !== undefined) return ts.createSourceFile(name, text, languageVersion, true);
    if (!readable(name)) return undefined;
    let cached = libCache.get(name);
    if (!cached) {
      cached = original.getSourceFile(name, languageVersion, onError);
      if (cached) libCache.set(name, cached);
    }
    return cached;
  };
  host.getCurrentDirectory = () => ROOT;
  const roots = [...virtual.keys()].filter((name) => name.endsWith('.js'));
  const program = ts.createProgram(roots, compilerOptions, host);
  const diagnostics = [...program.getSyntacticDiagnostics(), ...program.getSemanticDiagnostics()]
    .filter((d) => d.file?.fileName.startsWith(ROOT))
    .map((d) => formatDiagnostic(ts, d));
  return { diagnostics, program };
}

function formatDiagnostic(ts: typeof import('typescript'), d: ts.Diagnostic): string {
  const message = ts.flattenDiagnosticMessageText(d.messageText, '\n');
  if (!d.file || d.start === undefined) return `TS${d.code}: ${message}`;
  const { line, character } = d.file.getLineAndCharacterOfPosition(d.start);
  return `${d.file.fileName.slice(ROOT.length + 1)}:${line + 1}:${character + 1} TS${d.code}: ${message}`;
}

const builtins = new Set(builtinModules);
const isBuiltin = (specifier: string) => specifier.startsWith('node:') || builtins.has(specifier);

function importsOf(ts: typeof import('typescript'), source: ts.SourceFile): string[] {
  const found: string[] = [];
  const visit = (node: ts.Node) => {
    if ((ts.isImportDeclaration(node) || ts.isExportDeclaration(node)) && node.moduleSpecifier && ts.isStringLiteral(node.moduleSpecifier)) {
      found.push(node.moduleSpecifier.text);
    }
    if (ts.isCallExpression(node) && node.expression.kind === ts.SyntaxKind.ImportKeyword) {
      const [arg] = node.arguments;
      if (arg && ts.isStringLiteral(arg)) found.push(arg.text);
    }
    ts.forEachChild(node, visit);
  };
  visit(source);
  return found;
}

function exportsOf(program: ts.Program, path: string): string[] {
  const source = program.getSourceFile(`${ROOT}/${path}`);
  const symbol = source && program.getTypeChecker().getSymbolAtLocation(source);
  return symbol ? program.getTypeChecker().getExportsOfModule(symbol).map((s) => s.getName()) : [];
}

/** Imports must be Node built-ins or the tool's own modules: a generated tool has no dependencies. */
function importDiagnostics(ts: typeof import('typescript'), program: ts.Program, path: string, allowed: ReadonlySet<string>): string[] {
  const source = program.getSourceFile(`${ROOT}/${path}`);
  if (!source) return [];
  return importsOf(ts, source)
    .filter((specifier) => !isBuiltin(specifier) && !allowed.has(specifier))
    .map((specifier) =>
      specifier.startsWith('.')
        ? `${path}: imports "${specifier}", which is not a module of this tool (${[...allowed].join(', ') || 'none'})`
        : `${path}: imports the package "${specifier}"; the tool has no dependencies: use Node built-ins (node:...) only`,
    );
}

/** One module on its own: it parses, type-checks, exports something, imports only what it may. */
export async function typeCheckModule(spec: ToolSpec, moduleName: string, code: string): Promise<string[]> {
  const ts = await loadTypeScript();
  const path = modulePath(moduleName);
  // Sibling modules may be imported; they are checked on their own, so stand-ins type as any.
  const siblings = spec.modules.filter((m) => m.name !== moduleName);
  // The tool's package.json says `type: module`; without it Node (and tsc) read .js as CommonJS.
  const files: ToolFiles = { 'package.json': '{"type":"module"}', [path]: code };
  for (const sibling of siblings) files[modulePath(sibling.name)] = 'export {};\n';
  const { diagnostics, program } = typeCheck(ts, files);
  const own = diagnostics.filter((d) => d.startsWith(`${path}:`) || d.startsWith('TS'));
  if (!exportsOf(program, path).length) own.push(`${path}: exports nothing; export the module's functions by name`);
  own.push(...importDiagnostics(ts, program, path, new Set(siblings.map((m) => `./${m.name}.js`))));
  return own;
}

/**
 * The whole tool, statically: every module of the spec present and exporting, the entry
 * importing each of them, everything type-checking together.
 */
export async function typeCheckTool(spec: ToolSpec, files: ToolFiles): Promise<string[]> {
  const ts = await loadTypeScript();
  const diagnostics: string[] = [];
  for (const module of spec.modules) {
    if (files[modulePath(module.name)] === undefined) diagnostics.push(`${modulePath(module.name)}: missing (module "${module.name}" of the spec)`);
  }
  const { diagnostics: typeErrors, program } = typeCheck(ts, files);
  diagnostics.push(...typeErrors);
  const allowed = new Set(spec.modules.map((m) => `./${m.name}.js`));
  for (const module of spec.modules) {
    const path = modulePath(module.name);
    if (files[path] !== undefined && !exportsOf(program, path).length) diagnostics.push(`${path}: exports nothing`);
    diagnostics.push(...importDiagnostics(ts, program, path, allowed));
  }
  const entry = program.getSourceFile(`${ROOT}/${ENTRY_PATH}`);
  if (entry) {
    const imported = new Set(importsOf(ts, entry));
    for (const module of spec.modules) {
      if (!imported.has(`./${module.name}.js`)) diagnostics.push(`${ENTRY_PATH}: does not import ./${module.name}.js; the entry must wire every module`);
    }
    diagnostics.push(...importDiagnostics(ts, program, ENTRY_PATH, allowed));
  } else diagnostics.push(`${ENTRY_PATH}: missing`);
  return diagnostics;
}

/** The pool's entry point (piscina calls the default export with each task). */
export default function runTypeCheck(task: TypeCheckTask): Promise<string[]> {
  return task.kind === 'module' ? typeCheckModule(task.spec, task.module, task.code) : typeCheckTool(task.spec, task.files);
}
