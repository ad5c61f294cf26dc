import { spawn } from 'node:child_process';
import { existsSync, openSync, closeSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { pathToFileURL } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { handWrittenAnswer } from '../examples/offline/answers.js';
import { checkModule, checkTool, closeToolChecks } from '../src/actors/toolCheck.js';
import { provideFlows } from '../src/flows.js';
import { renderToolFiles } from '../src/toolFiles.js';
import type { ToolSpec } from '../src/contracts/toolSpec.js';
import { runToEnd, scripted } from './support/flows.js';

// Issue 11: the tool builder's checks under load. 300 concurrent builds on one daemon made
// KV requests time out while its event loop ran the TypeScript compiler; and where no
// sandbox works, generated code must not run, without sending the model into repairs.

const ROOT = new URL('..', import.meta.url).pathname;
const TSX = pathToFileURL(createRequire(import.meta.url).resolve('tsx')).href;
const spec: ToolSpec = JSON.parse(await readFile(join(ROOT, 'examples/api-tester.json'), 'utf8'));
const handWritten = (file: string) => readFile(join(ROOT, 'examples/offline/api-tester', file), 'utf8');
const modules = Object.fromEntries(await Promise.all(spec.modules.map(async (m) => [m.name, await handWritten(`${m.name}.js`)] as const)));
const tool = renderToolFiles(spec, modules, { entry: await handWritten('cli.js'), readme: await handWritten('README.md') });
/** An entry that type-checks but fails `--help`: run, it gives a diagnostic; not run, none. */
const HELP_FAILS = "if (process.argv.includes('--help')) {\n  console.error('this --help ran');\n  process.exit(1);\n}\n";
const failingHelp = { ...tool, 'src/cli.js': tool['src/cli.js']!.replace('\n', `\n${HELP_FAILS}`) };

const tempDirs: string[] = [];
afterAll(async () => {
  await closeToolChecks();
  await Promise.all(tempDirs.map((dir) => rm(dir, { recursive: true, force: true })));
});

const typescriptLoadedHere = () => Object.keys(createRequire(import.meta.url).cache).some((path) => path.includes('/typescript/lib/typescript.js'));

describe('the type-check runs off the event loop', () => {
  it('keeps the event loop free while 20 builds check at once, and never loads the compiler on it', { timeout: 180_000 }, async () => {
    const histogram = monitorEventLoopDelay({ resolution: 10 });
    histogram.enable();
    // As 20 concurrent tool builds do: a module, then the whole tool (type-check, --help).
    const results = await Promise.all(
      Array.from({ length: 20 }, async (_, i) => {
        const module = await checkModule(spec, 'auth', `${modules.auth}// build ${i}\n`);
        const whole = await checkTool(spec, { ...tool, 'src/auth.js': `${modules.auth}// build ${i}\n` });
        return module.ok && whole.ok;
      }),
    );
    histogram.disable();
    expect(results.every(Boolean)).toBe(true);
    // Before the pool the checks ran back to back on this thread: stalls of 5 to 12 s.
    expect(histogram.max / 1e6, 'the longest event-loop stall, in ms').toBeLessThan(1000);
    expect(typescriptLoadedHere()).toBe(false);
  });

  it('still reports what the compiler finds', async () => {
    const broken = await checkModule(spec, 'auth', 'export function authHeaders(credentials) {\n  return { authorization: tokenFor(credentials) };\n}\n');
    expect(broken.ok).toBe(false);
    expect(broken.diagnostics).toEqual([expect.stringMatching(/^src\/auth\.js:2:\d+ TS2304: Cannot find name 'tokenFor'/)]);
    expect(await checkTool(spec, tool)).toEqual({ ok: true, diagnostics: [] });
  });

  it('works from the built dist/ too, and its threads do not keep the process alive', async () => {
    const entry = join(ROOT, 'dist/actors/toolCheck.js');
    expect(existsSync(entry), 'dist/ is missing or old: run npm run build first (npm test does)').toBe(true);
    const dir = await mkdtemp(join(tmpdir(), 'toolcheck-dist-'));
    tempDirs.push(dir);
    const script = join(dir, 'check.mjs');
    // No closeToolChecks(): the process must end by itself once the checks are done.
    await writeFile(
      script,
      `import { createRequire } from 'node:module';
import { checkModule, checkTool } from ${JSON.stringify(pathToFileURL(entry).href)};
const [spec, tool, auth] = JSON.parse(process.argv[2]);
const module = await checkModule(spec, 'auth', auth);
const whole = await checkTool(spec, tool);
const loaded = Object.keys(createRequire(import.meta.url).cache).some((p) => p.includes('/typescript/lib/typescript.js'));
console.log(JSON.stringify({ module, whole, loaded }));
`,
    );
    const child = spawn(process.execPath, [script, JSON.stringify([spec, tool, modules.auth])], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    const exit = await Promise.race([
      new Promise<number | null>((resolve) => child.on('exit', resolve)),
      new Promise<'hung'>((resolve) => setTimeout(() => resolve('hung'), 25_000)),
    ]);
    if (exit === 'hung') child.kill('SIGKILL');
    expect(exit, stderr).toBe(0);
    expect(JSON.parse(stdout)).toEqual({ module: { ok: true, diagnostics: [] }, whole: { ok: true, diagnostics: [] }, loaded: false });
  });
});

describe('where generated code cannot run isolated, it does not run', () => {
  it('MICROTASK_SANDBOX=none: --help is not run, the check passes on the rest and says so, once in a warning', async () => {
    const warnings: Error[] = [];
    const onWarning = (w: Error) => warnings.push(w);
    process.on('warning', onWarning);
    process.env.MICROTASK_SANDBOX = 'none';
    try {
      const first = await checkTool(spec, failingHelp);
      const second = await checkTool(spec, failingHelp);
      expect(first).toEqual({ ok: true, diagnostics: [], notRun: ['src/cli.js --help was not run: MICROTASK_SANDBOX=none: generated code is never run here'] });
      expect(second).toEqual(first);
    } finally {
      delete process.env.MICROTASK_SANDBOX;
      process.off('warning', onWarning);
    }
    await new Promise((resolve) => setImmediate(resolve));
    expect(warnings.filter((w) => (w as { code?: string }).code === 'MICROTASK_SANDBOX_UNAVAILABLE')).toHaveLength(1);
    // With a sandbox, the same code runs, and its failure is reported.
    expect((await checkTool(spec, failingHelp)).diagnostics).toEqual([expect.stringMatching(/^src\/cli\.js --help exited with code 1: this --help ran/)]);
  });

  it('the tool builder writes the tool, records that --help was not run, and spends no extra model call on it', async () => {
    const outRoot = await mkdtemp(join(tmpdir(), 'toolcheck-build-'));
    tempDirs.push(outRoot);
    process.env.MICROTASK_SANDBOX = 'none';
    try {
      const runtime = scripted((request) => handWrittenAnswer(request));
      const flows = provideFlows({ microtask: runtime.microtask });
      const output = await runToEnd(flows.catalog.machineOf('tool-builder'), { key: 'tb', spec, outRoot });
      expect(output).toMatchObject({ status: 'done', integration: { approved: true, recovered: false } });
      expect(output.notRun).toEqual(['src/cli.js --help was not run: MICROTASK_SANDBOX=none: generated code is never run here']);
      // 3 analyses, generate + verify per module, one entry and its review: as when --help runs.
      expect(runtime.model.calls).toHaveLength(3 + 3 * 2 + 2);
    } finally {
      delete process.env.MICROTASK_SANDBOX;
    }
  });

  it('auto, where seccomp forbids namespaces (as Docker\'s default profile does): refuses, saying why', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'toolcheck-seccomp-'));
    tempDirs.push(dir);
    await writeFile(join(dir, 'filter.bpf'), namespaceDenyingFilter());
    await writeFile(join(dir, 'cli.js'), HELP_FAILS);
    const filter = openSync(join(dir, 'filter.bpf'), 'r');
    // bwrap (as root, before the filter applies) only to put the filter on the harness.
    const child = spawn(
      'bwrap',
      ['--bind', '/', '/', '--seccomp', '3', '--', process.execPath, '--import', TSX, join(ROOT, 'test/support/sandboxHarness.ts'), join(dir, 'cli.js'), 'check'],
      { cwd: ROOT, env: { PATH: process.env.PATH, NODE_NO_WARNINGS: '1' }, stdio: ['ignore', 'pipe', 'pipe', filter] },
    );
    closeSync(filter);
    let stdout = '';
    let stderr = '';
    child.stdout!.on('data', (d) => (stdout += d));
    child.stderr!.on('data', (d) => (stderr += d));
    expect(await new Promise((resolve) => child.on('exit', resolve)), stderr).toBe(0);
    const { result } = JSON.parse(stdout) as { result: { status: { ok: boolean; reason: string }; check: { ok: boolean; diagnostics: string[]; notRun: string[] } } };
    expect(result.status.ok).toBe(false);
    expect(result.status.reason).toMatch(/^no sandbox works on this host \(bwrap: .*namespace.*; unshare: .*Operation not permitted\); install bubblewrap \(apt-get install -y bubblewrap\)/);
    expect(result.check).toEqual({ ok: true, diagnostics: [], notRun: [`src/cli.js --help was not run: ${result.status.reason}`] });
  });
});

/**
 * A seccomp filter (classic BPF) that refuses what Docker's default profile refuses to a
 * container without CAP_SYS_ADMIN: unshare, setns, clone with namespace flags, clone3.
 */
function namespaceDenyingFilter(): Buffer {
  const numbers = {
    x64: { audit: 0xc000003e, unshare: 272, setns: 308, clone: 56, clone3: 435 },
    arm64: { audit: 0xc00000b7, unshare: 97, setns: 268, clone: 220, clone3: 435 },
  }[process.arch as 'x64' | 'arm64'];
  if (!numbers) throw new Error(`no syscall numbers for ${process.arch} in this test: add them`);
  const op = (code: number, jt: number, jf: number, k: number) => {
    const b = Buffer.alloc(8);
    b.writeUInt16LE(code, 0);
    b.writeUInt8(jt, 2);
    b.writeUInt8(jf, 3);
    b.writeUInt32LE(k >>> 0, 4);
    return b;
  };
  const LOAD = 0x20, JEQ = 0x15, JSET = 0x45, RET = 0x06;
  const ALLOW = 0x7fff0000, EPERM = 0x00050001, ENOSYS = 0x00050026;
  const NAMESPACE_FLAGS = 0x7e020000; // CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET
  return Buffer.concat([
    op(LOAD, 0, 0, 4), //            0: the architecture
    op(JEQ, 1, 0, numbers.audit), // 1: ours → 3
    op(RET, 0, 0, ALLOW), //         2
    op(LOAD, 0, 0, 0), //            3: the syscall number
    op(JEQ, 7, 0, numbers.unshare), // 4 → 12
    op(JEQ, 6, 0, numbers.setns), // 5 → 12
    op(JEQ, 7, 0, numbers.clone3), // 6 → 14
    op(JEQ, 0, 3, numbers.clone), // 7 → 8, else 11
    op(LOAD, 0, 0, 16), //           8: clone's flags (low 32 bits)
    op(JSET, 2, 0, NAMESPACE_FLAGS), // 9 → 12
    op(RET, 0, 0, ALLOW), //         10
    op(RET, 0, 0, ALLOW), //         11
    op(RET, 0, 0, EPERM), //         12
    op(RET, 0, 0, EPERM), //         13
    op(RET, 0, 0, ENOSYS), //        14: clone3, so that callers fall back to clone
  ]);
}
