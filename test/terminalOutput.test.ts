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

describe('the progress lines (stderr)', () => {
  it("show the control characters of what a client or a server wrote (a task type, a key, an error's message), not obey them", async () => {
    const { Writable } = await import('node:stream');
    const { progressDisplay } = await import('../src/cli/liveProgress.js');
    let text = '';
    const stream = new Writable({
      write(chunk, _encoding, done) {
        text += String(chunk);
        done();
      },
    }) as unknown as NodeJS.WriteStream;
    const progress = progressDisplay({ stream, live: false, color: false });
    const hostile = '\x1b]52;c;ZWNobyBwd25lZA==\x07\x1b[2J';
    const at = new Date().toISOString();
    const base = { kind: 'microtask' as const, flowId: 'flow-t', actor: 'root/ask', key: `flow-t/${hostile}/0`, taskType: `ask${hostile}` };
    progress.onEntry({ ...base, at, phase: 'started', prompt: 'p' });
    progress.onEntry({
      ...base,
      at,
      phase: 'finished',
      result: { success: false, taskType: base.taskType, key: base.key, error: { kind: 'unavailable', message: `down ${hostile}\rhidden`, retryable: true }, durationMs: 1, usage: { inputTokens: 0, outputTokens: 0, cacheCreationInputTokens: 0, cacheReadInputTokens: 0, calls: 1 }, cached: false },
    });
    progress.onEntry({ kind: 'flow', flowId: 'flow-t', at, phase: 'ended', pattern: 'microtask', status: 'failed', error: { code: 'X', message: `end ${hostile}` } });
    progress.done();
    expect(text).toContain('\\u001b]52;c;');
    expect(text).not.toMatch(/[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]/);
    expect(text).toContain('down \\u001b]52');
  });
});
