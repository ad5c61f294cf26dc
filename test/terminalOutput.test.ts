import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { reply, startFakeAnthropic, type FakeAnthropic } from '../src/testing/fakeAnthropic.js';

// A model's answer is hostile, and `microtask run` prints it. In a terminal, escape sequences
// in it are obeyed: OSC 52 writes the clipboard, others retitle the window, move the cursor,
// or hide the lines above (a bare carriage return). Shown to a terminal they must be
// visible, not obeyed; a pipe gets the answer byte for byte.

const ROOT = new URL('..', import.meta.url).pathname;
const ANSWER = 'safe line\n\x1b]52;c;ZWNobyBwd25lZA==\x07\x1b[2J\x1b]0;pwned\x07tab\there\r\nover\rwritten';
let model: FakeAnthropic;
let dir: string;

beforeAll(async () => {
  model = await startFakeAnthropic({ replies: () => reply.text(ANSWER) });
  dir = await mkdtemp(join(tmpdir(), 'terminal-output-'));
  await writeFile(join(dir, 'input.json'), JSON.stringify({ taskType: 't', system: 's', prompt: 'p' }));
});
afterAll(async () => {
  await model?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

const env = () => ({
  PATH: process.env.PATH ?? '',
  ANTHROPIC_API_KEY: 'test-key',
  ANTHROPIC_BASE_URL: model.url,
  MICROTASK_STATE_DIR: join(dir, `state-${Math.random().toString(36).slice(2)}`),
  NODE_NO_WARNINGS: '1',
});
const cli = () => ['--import', 'tsx', join(ROOT, 'src/cli.ts'), 'run', 'microtask', '--input', join(dir, 'input.json'), '--no-progress'];

describe("a model's answer printed by `microtask run`", () => {
  it('shows its control characters to a terminal instead of obeying them', { timeout: 60_000 }, async () => {
    // `script` runs the command on a pseudo-terminal (util-linux), as a person's shell does.
    const command = [process.execPath, ...cli()].map((arg) => `'${arg}'`).join(' ');
    const { stdout } = await promisify(execFile)('script', ['-qec', `${command} 2>/dev/null`, '/dev/null'], { env: env(), cwd: ROOT });
    expect(stdout).toContain('safe line');
    expect(stdout).not.toMatch(/\x1b\]|\x1b\[2J|\x07/);
    expect(stdout).toContain('\\u001b]52;c;ZWNobyBwd25lZA==\\u0007');
    // Lines, tabs and CRLF line ends stay as they are; a carriage return alone is shown.
    expect(stdout).toContain('tab\there');
    expect(stdout).toContain('over\\u000dwritten');
  });

  it('gives a pipe the answer as it is; `microtask show -v` shows its control characters', { timeout: 60_000 }, async () => {
    const run = (args: string[], vars: Record<string, string>) => promisify(execFile)(process.execPath, args, { env: vars, cwd: ROOT });
    const vars = env();
    const { stdout } = await run(cli(), vars);
    expect(stdout).toBe(`${ANSWER}\n`);
    const [flow] = JSON.parse((await run([...cli().slice(0, 3), 'flows', '--json'], vars)).stdout) as Array<{ flowId: string }>;
    const shown = (await run([...cli().slice(0, 3), 'show', flow!.flowId, '-v'], vars)).stdout;
    expect(shown).toContain('answer: safe line \\u001b]52;c;ZWNobyBwd25lZA==\\u0007');
    expect(shown).not.toMatch(/\x1b\]|\x07/);
  });
});
