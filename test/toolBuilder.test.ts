import { execFile } from 'node:child_process';
import { mkdtemp, readFile, readdir, symlink, writeFile, mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { createActor, toPromise, waitFor } from 'xstate';
import { handWrittenAnswer } from '../examples/offline/answers.js';
import { checkTool } from '../src/actors/toolCheck.js';
import { ToolWriteError, writeToolFiles } from '../src/actors/toolWriter.js';
import type { ModelRequest } from '../src/actors/model/ModelPort.js';
import type { ScriptedAnswer } from '../src/actors/model/ScriptedModel.js';
import { provideFlows } from '../src/flows.js';
import { toolBuilderMachine, type ToolBuilderInput } from '../src/machines/toolBuilder.js';
import type { ToolSpec } from '../src/contracts/toolSpec.js';
import { roundTrip, runToEnd, scripted, stateCoverage } from './support/flows.js';

const coverage = stateCoverage(toolBuilderMachine);
const spec: ToolSpec = JSON.parse(await readFile(new URL('../examples/api-tester.json', import.meta.url), 'utf8'));
const handWritten = (file: string) => readFile(new URL(`../examples/offline/api-tester/${file}`, import.meta.url), 'utf8');

type Override = (request: ModelRequest<unknown>, index: number) => ScriptedAnswer | undefined;

async function build(override: Override = () => undefined, input: Partial<ToolBuilderInput> = {}) {
  const outRoot = await mkdtemp(join(tmpdir(), 'toolbuilder-'));
  const runtime = scripted((request, index) => override(request, index) ?? handWrittenAnswer(request));
  const flows = provideFlows({ microtask: runtime.microtask });
  const output = await runToEnd(flows.catalog.machineOf('tool-builder'), { key: 'tb', spec, outRoot, ...input }, coverage.inspect);
  return { output, outRoot, model: runtime.model };
}

const isModule = (request: ModelRequest<unknown>, name: string) =>
  (request.data as { module?: { name: string } } | undefined)?.module?.name === name;

describe('the tool builder', () => {
  it('builds the spec into a tool that type-checks and runs --help, accounting every call', async () => {
    const { output, outRoot, model } = await build();
    expect(output).toMatchObject({ status: 'done', name: 'api-tester', integration: { approved: true, recovered: false } });
    expect(output.files).toEqual(['README.md', 'package.json', 'src/auth.js', 'src/cli.js', 'src/requests.js', 'src/validator.js']);
    expect(output.modules.map((m: { name: string; via: string }) => `${m.name}:${m.via}`)).toEqual([
      'auth:feedback-loop',
      'requests:feedback-loop',
      'validator:feedback-loop',
    ]);
    // 3 analyses, generate + verify per module, one entry and its review.
    expect(model.calls).toHaveLength(3 + 3 * 2 + 2);
    expect(output.usage.calls).toBe(model.calls.length);
    expect(output.usage.inputTokens).toBeGreaterThan(0);

    const dir = join(outRoot, 'api-tester');
    expect(output.dir).toBe(dir);
    const pkg = JSON.parse(await readFile(join(dir, 'package.json'), 'utf8'));
    expect(pkg).toMatchObject({ name: 'api-tester', type: 'module', bin: { 'api-tester': 'src/cli.js' } });
    const files = Object.fromEntries(
      await Promise.all(output.files.map(async (f: string) => [f, await readFile(join(dir, f), 'utf8')] as const)),
    );
    expect(await checkTool(spec, files)).toEqual({ ok: true, diagnostics: [] });
    const help = await promisify(execFile)(process.execPath, [join(dir, 'src/cli.js'), '--help']);
    expect(help.stdout).toContain('Usage: api-tester <url>');
  });

  it('refuses a spec with a path-escaping module name before any model call', async () => {
    const outRoot = await mkdtemp(join(tmpdir(), 'toolbuilder-'));
    const runtime = scripted(() => 'never');
    const flows = provideFlows({ microtask: runtime.microtask });
    const bad = { ...spec, modules: [{ name: '../../x', purpose: 'escape' }] };
    const output = await runToEnd(flows.catalog.machineOf('tool-builder'), { key: 'tb', spec: bad, outRoot }, coverage.inspect);
    expect(output.status).toBe('failed');
    expect(output.reason).toMatch(/invalid tool spec: modules\.0\.name: a module name is/);
    expect(runtime.model.calls).toHaveLength(0);
    expect(await readdir(outRoot)).toEqual([]);
  });

  it('puts the type checker\'s diagnostics into the verifier\'s prompt and the revision', async () => {
    let broken = true;
    const { output, model } = await build((request) => {
      if (request.schemaName === 'code' && isModule(request, 'auth') && broken) {
        broken = false;
        return { value: { code: 'export function authHeaders(credentials) {\n  return { authorization: tokenFor(credentials) };\n}\n' } };
      }
      return undefined;
    });
    expect(output.status).toBe('done');
    const verify = model.calls.find((c) => c.request.schemaName === 'verdict')!;
    expect(JSON.stringify(verify.request.data)).toContain("TS2304: Cannot find name 'tokenFor'");
    const revision = model.calls.filter((c) => c.request.schemaName === 'code' && isModule(c.request as ModelRequest<unknown>, 'auth'))[1]!;
    expect(revision.request.prompt).toContain("Cannot find name 'tokenFor'");
    expect(output.modules[0]).toMatchObject({ name: 'auth', iterations: 2, passed: true });
  });

  it('repairs a module by code alone (level 0) when the loop falls short only on markdown fences', async () => {
    const fenced = `Here is the module:\n\`\`\`js\n${await handWritten('validator.js')}\n\`\`\``;
    const { output } = await build(
      (request) => (request.schemaName === 'code' && isModule(request, 'validator') ? { value: { code: fenced } } : undefined),
      { maxIterations: 1 },
    );
    expect(output.status).toBe('done');
    expect(output.modules[2]).toMatchObject({ name: 'validator', via: 'code-only', passed: true });
    expect(output.modules[2].code.startsWith('// @ts-check')).toBe(true);
  });

  it('writes a tool whose module never reached the threshold, and says so (exhausted)', async () => {
    const { output } = await build(
      (request) => {
        if (request.schemaName !== 'verdict') return undefined;
        const output = (request.data as { output?: { code?: string } }).output;
        return output?.code?.includes('validateResponse') ? { value: { score: 0.5, feedback: 'cover more content types' } } : undefined;
      },
      { maxIterations: 1, maxAttempts: 1 },
    );
    expect(output.status).toBe('exhausted');
    expect(output.reason).toContain('validator (best score 0.5) did not reach the threshold 0.8');
    expect(output.modules[2]).toMatchObject({ via: 'best-effort', passed: false });
    expect(output.files).toContain('src/validator.js');
  });

  it('recovers a failed integration with metacognitive analysis', async () => {
    const cli = await handWritten('cli.js');
    const unwired = cli.replace("import { validateResponse } from './validator.js';\n", '').replace(/const failures = validateResponse[\s\S]*?\}\);\n/, 'const failures = [];\n');
    let entries = 0;
    const { output, model } = await build(
      (request) => {
        if (request.schemaName === 'toolEntry' && entries++ < 3) return { value: { entry: unwired, readme: '# api-tester' } };
        if (request.schemaName === 'failureAnalysis') {
          return { value: { rootCause: 'the entry does not import the validator', retry: true, adjustments: { promptAdditions: ['import and use every module'] }, reason: 'a clear fix' } };
        }
        return undefined;
      },
      { maxRevisions: 1 },
    );
    expect(output).toMatchObject({ status: 'done', integration: { approved: false, recovered: true } });
    const reviewData = JSON.stringify(model.calls.find((c) => c.request.schemaName === 'review')!.request.data);
    expect(reviewData).toContain('does not import ./validator.js');
    const retried = model.calls.filter((c) => c.request.schemaName === 'toolEntry')[3]!;
    expect(retried.request.system).toContain('import and use every module');
  });

  it('fails with the reason when recovery cannot fix the integration', async () => {
    const { output } = await build(
      (request) => {
        if (request.schemaName === 'toolEntry') return { value: { entry: 'console.log("no")', readme: '#' } };
        if (request.schemaName === 'failureAnalysis') {
          return { value: { rootCause: 'the model ignores the modules', retry: false, adjustments: { promptAdditions: [] }, reason: 'retrying will not help' } };
        }
        return undefined;
      },
      { maxRevisions: 0 },
    );
    expect(output.status).toBe('failed');
    expect(output.reason).toContain('retrying will not help');
    expect(output.files).toEqual([]);
  });

  it('stops cleanly at its budget, keeping the modules made so far, writing nothing', async () => {
    const { output, outRoot } = await build(undefined, { budget: { maxCalls: 6 } });
    expect(output.status).toBe('budget_exceeded');
    expect(output.usage.calls).toBeLessThanOrEqual(6);
    expect(output.modules.map((m: { name: string }) => m.name)).toContain('auth');
    expect(output.reason).toContain('6 model calls');
    expect(await readdir(outRoot)).toEqual([]);

    // A budget spent exactly by the analysis: no child gets a call of its own.
    const exact = await build(undefined, { budget: { maxCalls: 3 } });
    expect(exact.output.status).toBe('budget_exceeded');
    expect(exact.model.calls).toHaveLength(3);
    expect(exact.output.reason).toBe('the budget of 3 model calls is spent (3 made)');
  });

  it('fails with a clear reason when the tool cannot be written', async () => {
    const base = await mkdtemp(join(tmpdir(), 'toolbuilder-'));
    await writeFile(join(base, 'a-file'), 'x');
    const { output } = await build(undefined, { outRoot: join(base, 'a-file') });
    expect(output.status).toBe('failed');
    expect(output.reason).toMatch(/the tool could not be written: .*(EEXIST|ENOTDIR)/);
  });

  it('survives a JSON round trip of its snapshot mid-flow and finishes with the same output', async () => {
    const outRoot = await mkdtemp(join(tmpdir(), 'toolbuilder-'));
    const first = scripted((request) => handWrittenAnswer(request));
    const uninterrupted = await runToEnd(provideFlows({ microtask: first.microtask }).catalog.machineOf('tool-builder'), { key: 'rt', spec, outRoot });

    const second = scripted((request) => handWrittenAnswer(request));
    const flows = provideFlows({ microtask: second.microtask });
    const { output, persisted } = await roundTrip(
      flows.catalog.machineOf('tool-builder'),
      { key: 'rt', spec, outRoot },
      (snapshot) => snapshot.matches('generatingModule') && snapshot.context.moduleIndex === 1,
      coverage.inspect,
    );
    expect(JSON.stringify(persisted)).toContain('"generatingModule"');
    // Issue 16: the second module's loop is restored under its own id (the first one's is gone).
    expect(Object.keys((persisted as { children: object }).children)).toEqual(['module:requests']);
    expect(output).toEqual(uninterrupted);
  });
});

describe('writing a tool', () => {
  it('never writes outside its output root', async () => {
    const root = await mkdtemp(join(tmpdir(), 'writer-'));
    await expect(writeToolFiles(root, '../evil', { 'a.txt': 'x' })).rejects.toMatchObject({ code: 'PATH_ESCAPE' });
    await expect(writeToolFiles(root, 'tool', { '../../escape.txt': 'x' })).rejects.toMatchObject({ code: 'PATH_ESCAPE' });
    await expect(writeToolFiles(root, 'tool', { '/etc/passwd': 'x' })).rejects.toBeInstanceOf(ToolWriteError);
  });

  it('refuses to write through a symbolic link', async () => {
    const root = await mkdtemp(join(tmpdir(), 'writer-'));
    const elsewhere = await mkdtemp(join(tmpdir(), 'elsewhere-'));
    await symlink(elsewhere, join(root, 'linked-tool'));
    await expect(writeToolFiles(root, 'linked-tool', { 'a.txt': 'x' })).rejects.toMatchObject({ code: 'SYMLINK_REFUSED' });
    await mkdir(join(root, 'tool'));
    await symlink(elsewhere, join(root, 'tool', 'src'));
    await expect(writeToolFiles(root, 'tool', { 'src/a.js': 'x' })).rejects.toMatchObject({ code: 'SYMLINK_REFUSED' });
    expect(await readdir(elsewhere)).toEqual([]);
  });
});


describe('the tool builder with a person approving before it writes', () => {
  const approvedBy = async (answer: { approved: boolean; feedback: string }) => {
    const outRoot = await mkdtemp(join(tmpdir(), 'toolbuilder-approval-'));
    const runtime = scripted((request) => handWrittenAnswer(request));
    const flows = provideFlows({ microtask: runtime.microtask });
    const actor = createActor(flows.catalog.machineOf('tool-builder'), { input: { key: 'tb', spec, outRoot, approval: {} }, inspect: coverage.inspect }).start();
    await waitFor(actor, (snap) => snap.matches('awaitingApproval'), { timeout: 60_000 });
    // Nothing is written while it waits.
    expect(await readdir(outRoot)).toEqual([]);
    actor.send({ type: 'review', data: answer });
    return { output: await toPromise(actor), outRoot };
  };

  it('writes the tool once a person approves it', async () => {
    const { output, outRoot } = await approvedBy({ approved: true, feedback: 'looks right' });
    expect(output).toMatchObject({ status: 'done', approval: { approved: true, feedback: 'looks right' } });
    expect(await readdir(join(outRoot, 'api-tester'))).toContain('package.json');
  });

  it('does not write a tool a person rejects, and says why', async () => {
    const { output, outRoot } = await approvedBy({ approved: false, feedback: 'no network calls in validator' });
    expect(output).toMatchObject({ status: 'exhausted', files: [], reason: 'not written: a person rejected the tool (no network calls in validator)' });
    expect(output.entry).toBeDefined();
    expect(await readdir(outRoot)).toEqual([]);
  });
});
