/**
 * The orchestrator's side of the hostile-code tests (test/sandbox.test.ts), as its own
 * process: started with a sentinel ANTHROPIC_API_KEY in its environment (so /proc/<pid>/environ
 * holds it) and `--inspect-port`, it runs the tool builder's `--help` check on a generated
 * `src/cli.js` (this process's pid put into its text), or runs that file in the sandbox
 * alone (`raw`: no Node permission model inside, to test the OS boundary by itself), or
 * runs the whole tool check and says which sandbox it found (`check`).
 * It installs no SIGUSR1 handler: the sandbox alone must keep the signal away. It prints
 * what the check saw and whether its own debugger opened.
 *
 *   node --import tsx --inspect-port=P test/support/sandboxHarness.ts <cli.js> <help|raw|check> [src|dist]
 */
import { readFile, rm } from 'node:fs/promises';
import inspector from 'node:inspector';
import { join } from 'node:path';

const [codeFile, mode = 'help', from = 'src'] = process.argv.slice(2);
const code = (await readFile(codeFile!, 'utf8')).replaceAll('__PARENT_PID__', String(process.pid));
const files = { 'package.json': '{"type":"module"}\n', 'src/cli.js': code };
const spec = { name: 'hostile', description: 'hostile generated code', modules: [] };

const base = from === 'dist' ? '../../dist/actors' : '../../src/actors';
const ext = from === 'dist' ? 'js' : 'ts';
const toolCheck = await import(`${base}/toolCheck.${ext}`);
let result: unknown;
if (mode === 'help') {
  result = { diagnostics: await toolCheck.runHelp(spec, files, 20_000) };
} else if (mode === 'check') {
  const sandbox = await import(`${base}/sandbox.${ext}`);
  result = { status: await sandbox.sandboxStatus(), check: await toolCheck.checkTool(spec, files) };
} else {
  const sandbox = await import(`${base}/sandbox.${ext}`);
  const { writeToolFiles } = await import(`${base}/toolWriter.${ext}`);
  const tempRoot = await sandbox.sandboxTempDir();
  const { dir } = await writeToolFiles(tempRoot, spec.name, files);
  try {
    result = await sandbox.runSandboxed({ dir, tempRoot, timeoutMs: 20_000, command: [process.execPath, join(sandbox.SANDBOX_TOOL_DIR, 'src/cli.js')] });
  } finally {
    await rm(tempRoot, { recursive: true, force: true });
  }
}
process.stdout.write(`${JSON.stringify({ pid: process.pid, result, inspectorUrl: inspector.url() ?? null })}\n`);
inspector.close();
await toolCheck.closeToolChecks?.();
process.exit(0);
