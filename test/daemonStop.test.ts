import { spawn } from 'node:child_process';
import { describe, expect, it } from 'vitest';

// Issue 11: the daemon's stop left the type-check pool (src/actors/toolCheck.ts, piscina
// threads) running the checks in flight and queued: the process, stopped by a signal, went
// on compiling for as long as they took before it could exit.
const CHILD = new URL('./support/daemonStopChild.ts', import.meta.url).pathname;

interface Line {
  at: number;
  check?: string;
  daemon?: string;
}

describe('a daemon stopping while a type-check runs', () => {
  it('ends the type-check threads: the process exits at once', async () => {
    const child = spawn(process.execPath, ['--import', 'tsx', CHILD, '50000'], { stdio: ['ignore', 'pipe', 'pipe'] });
    const lines: Line[] = [];
    let stderr = '';
    let buffered = '';
    child.stdout.on('data', (d: Buffer) => {
      buffered += d.toString();
      for (let at = buffered.indexOf('\n'); at >= 0; at = buffered.indexOf('\n')) {
        lines.push(JSON.parse(buffered.slice(0, at)) as Line);
        buffered = buffered.slice(at + 1);
      }
    });
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const exit = await new Promise<{ code: number | null; at: number }>((resolve) => child.on('exit', (code) => resolve({ code, at: Date.now() })));

    expect(exit.code, stderr).toBe(0);
    const stopped = lines.find((l) => l.daemon === 'stopped');
    expect(stopped, JSON.stringify(lines)).toBeDefined();
    // The check was still at work when the daemon stopped: it was ended, not waited for.
    expect(lines.find((l) => l.check)?.check).toBe('started');
    expect(lines.find((l) => l.check === 'finished')).toBeUndefined();
    expect(exit.at - stopped!.at).toBeLessThan(1_500);
  }, 90_000);
});
