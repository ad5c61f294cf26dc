import { spawn } from 'node:child_process';
import { createWriteStream } from 'node:fs';
import { NatsServerMissingError } from '../testing/natsServer.js';

/** The nats-server of `microtask dev`: on 127.0.0.1 only, JetStream on, its store where it is told. */
export interface DevNats {
  readonly url: string;
  readonly pid: number;
  /** Resolves when the server exits, for whatever reason, with its exit code (null: a signal). */
  readonly exited: Promise<number | null>;
  /** SIGTERM (nats-server then flushes its store), SIGKILL after `graceMs`; resolves once it has exited. */
  stop(graceMs?: number): Promise<void>;
}

/**
 * Starts nats-server and resolves once it says it is ready. It runs in a process group of
 * its own: a Ctrl-C in the terminal reaches `microtask dev` only, which stops it last, after
 * the daemon's final saves into its KV buckets. Its log goes to `logFile`.
 */
export async function startDevNats(options: { bin: string; port: number; storeDir: string; logFile: string; startTimeoutMs?: number }): Promise<DevNats> {
  const { bin, port, storeDir, logFile } = options;
  const child = spawn(bin, ['-a', '127.0.0.1', '-p', String(port), '-js', '-sd', storeDir], { detached: true, stdio: ['ignore', 'ignore', 'pipe'] });
  const log = createWriteStream(logFile, { flags: 'a' });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  let recent = '';
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`nats-server did not start within ${options.startTimeoutMs ?? 10_000} ms on 127.0.0.1:${port}; its log: ${logFile}`));
    }, options.startTimeoutMs ?? 10_000);
    child.stderr!.on('data', (chunk: Buffer) => {
      log.write(chunk);
      recent = (recent + chunk.toString()).slice(-4_000);
      if (recent.includes('Server is ready')) {
        clearTimeout(timer);
        resolve();
      }
    });
    child.once('error', (e) => {
      clearTimeout(timer);
      reject(new NatsServerMissingError(`cannot run ${bin}: ${e.message}`));
    });
    void exited.then((code) => {
      clearTimeout(timer);
      // Its last lines say why (a store it cannot open, a port taken since the check).
      const why = recent.trim().split('\n').slice(-3).map((line) => line.replace(/^\[\d+\] \S+ \S+ /, '')).join('; ');
      reject(new Error(`nats-server exited with code ${code} before it was ready: ${why} (log: ${logFile})`));
    });
  });

  async function stop(graceMs = 5_000) {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
      await exited;
      clearTimeout(timer);
    }
    await new Promise<void>((resolve) => log.end(resolve));
  }

  return { url: `nats://127.0.0.1:${port}`, pid: child.pid!, exited, stop };
}
