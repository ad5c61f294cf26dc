import { spawn, type ChildProcess } from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';

/**
 * Starts a real nats-server (JetStream on) on a free port with a temporary store, for
 * tests: `await using nats = await startNatsServer()`. It can be stopped and started
 * again on the same port and store, to test what happens when the server goes away.
 */
export interface NatsServer extends AsyncDisposable {
  readonly url: string;
  readonly port: number;
  readonly storeDir: string;
  /** Stops the server (SIGTERM) and waits for it to exit. */
  stop(): Promise<void>;
  /** Starts it again on the same port and store. */
  start(): Promise<void>;
  /** Stops it and deletes its store. */
  close(): Promise<void>;
}

export class NatsServerMissingError extends Error {
  override readonly name = 'NatsServerMissingError';
  readonly code = 'NATS_SERVER_MISSING';
}

const INSTALL_HINT =
  'Install it with `apt-get install nats-server` (Debian, Ubuntu), or download a release from ' +
  'https://github.com/nats-io/nats-server/releases and set NATS_SERVER_BIN=/path/to/nats-server.';

/** Finds nats-server: NATS_SERVER_BIN, then PATH, then the places Debian and Homebrew put it. */
export function findNatsServer(env: NodeJS.ProcessEnv = process.env): string {
  const explicit = env.NATS_SERVER_BIN;
  if (explicit) {
    if (isExecutable(explicit)) return explicit;
    throw new NatsServerMissingError(`NATS_SERVER_BIN=${explicit} is not an executable file. ${INSTALL_HINT}`);
  }
  const dirs = [...(env.PATH ?? '').split(delimiter), '/usr/sbin', '/usr/local/bin', '/opt/homebrew/bin'];
  for (const dir of dirs.filter(Boolean)) {
    const candidate = join(dir, 'nats-server');
    if (isExecutable(candidate)) return candidate;
  }
  throw new NatsServerMissingError(`nats-server was not found on PATH, in /usr/sbin or /usr/local/bin. ${INSTALL_HINT}`);
}

function isExecutable(path: string): boolean {
  try {
    accessSync(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}

export async function startNatsServer(
  options: {
    bin?: string;
    startTimeoutMs?: number;
    /** More nats-server flags, e.g. `['--auth', 'token']` or `['--user', 'u', '--pass', 'p']`. */
    args?: string[];
  } = {},
): Promise<NatsServer> {
  const bin = options.bin ?? findNatsServer();
  const port = await freePort();
  const storeDir = await mkdtemp(join(tmpdir(), 'microtask-nats-'));
  const startTimeoutMs = options.startTimeoutMs ?? 10_000;
  let child: ChildProcess | undefined;

  async function start(): Promise<void> {
    if (child) return;
    const proc = spawn(bin, ['-a', '127.0.0.1', '-p', String(port), '-js', '-sd', storeDir, ...(options.args ?? [])], {
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    child = proc;
    let log = '';
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        proc.kill('SIGKILL');
        reject(new Error(`nats-server did not start within ${startTimeoutMs} ms on port ${port}:\n${log}`));
      }, startTimeoutMs);
      proc.stderr!.on('data', (chunk: Buffer) => {
        log += chunk.toString();
        if (log.includes('Server is ready')) {
          clearTimeout(timer);
          resolve();
        }
      });
      proc.once('error', (e) => {
        clearTimeout(timer);
        reject(new NatsServerMissingError(`cannot run ${bin}: ${e.message}. ${INSTALL_HINT}`));
      });
      proc.once('exit', (code) => {
        clearTimeout(timer);
        child = undefined;
        reject(new Error(`nats-server exited with code ${code} before it was ready:\n${log}`));
      });
    });
    // Drain stderr so a chatty server never blocks on a full pipe.
    proc.stderr!.resume();
  }

  async function stop(): Promise<void> {
    const proc = child;
    if (!proc) return;
    child = undefined;
    if (proc.exitCode !== null || proc.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
    proc.kill('SIGTERM');
    const timer = setTimeout(() => proc.kill('SIGKILL'), 5_000);
    await exited;
    clearTimeout(timer);
  }

  async function close(): Promise<void> {
    await stop();
    await rm(storeDir, { recursive: true, force: true });
  }

  await start();
  return { url: `nats://127.0.0.1:${port}`, port, storeDir, start, stop, close, [Symbol.asyncDispose]: close };
}
