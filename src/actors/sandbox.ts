import { execFile } from 'node:child_process';
import { existsSync, lstatSync, readlinkSync, realpathSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { delimiter, dirname, join } from 'node:path';
import { EnvSchema, SANDBOX_CHOICES } from '../config.js';

/**
 * Runs generated code isolated by the operating system, never only under Node's permission
 * model (which Node documents as no security boundary: the code could still signal its
 * parent with SIGUSR1, open the parent's debugger and run code in it).
 *
 * Inside the sandbox the code has: its own user, pid, network, IPC, UTS and cgroup
 * namespaces (no process of ours to signal or trace, no /proc of ours, only a loopback of
 * its own); a filesystem made of read-only binds of /usr (and what /lib, /bin point to),
 * Node's install directory and the tool's copy, a fresh /proc, a few devices and a small
 * tmpfs /tmp; no environment; no capabilities. Outside, it runs as `nobody` (65534) when
 * the orchestrator is root, so even an escape finds a uid that owns nothing of ours; an
 * orchestrator that is not root cannot change uid, and relies on the namespaces alone.
 *
 * Mechanisms, chosen by MICROTASK_SANDBOX (`auto` tries them in this order):
 * - `bwrap`: bubblewrap (Flatpak's sandbox, `apt-get install -y bubblewrap`).
 * - `unshare`: util-linux's unshare, mount, pivot_root and setpriv, doing the same steps
 *   by a short script (for hosts with util-linux but no bubblewrap).
 * - `none`: never run generated code.
 * Both need user namespaces (unprivileged ones when not root). Where no mechanism works
 * (not Linux, a container whose seccomp profile forbids namespaces), generated code is not
 * run at all, and the reason says why: it never falls back to running it unisolated.
 */

export type SandboxChoice = (typeof SANDBOX_CHOICES)[number];
export type SandboxMechanism = 'bwrap' | 'unshare';

export type SandboxStatus =
  | { ok: true; mechanism: SandboxMechanism; /** The uid the code runs as, outside its namespaces. */ outsideUid: number }
  | { ok: false; reason: string };

export type SandboxErrorCode = 'SANDBOX_UNAVAILABLE';
export class SandboxUnavailableError extends Error {
  override readonly name = 'SandboxUnavailableError';
  readonly code: SandboxErrorCode = 'SANDBOX_UNAVAILABLE';
  constructor(readonly reason: string) {
    super(`generated code was not run: ${reason}`);
  }
}

/** The uid and gid the sandbox runs as outside its namespaces when we are root: `nobody`. */
export const SANDBOX_UID = 65534;
/** Where the tool's copy appears inside the sandbox. */
export const SANDBOX_TOOL_DIR = '/tool';

const INSTALL_HINT =
  'install bubblewrap (apt-get install -y bubblewrap) on Linux with user namespaces allowed ' +
  '(sysctl kernel.unprivileged_userns_clone=1 where it exists; in a container, a seccomp profile that permits them: see the README, "Security")';

export interface SandboxRun {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  timedOut: boolean;
  /** stdout or stderr went over `maxBuffer` and the run was killed. */
  overflowed: boolean;
}

export interface SandboxRunOptions {
  /** The tool's directory on this host: bound read-only at {@link SANDBOX_TOOL_DIR}, the working directory. */
  dir: string;
  /** The program and its arguments, as the sandbox sees them (paths under /tool, /usr). */
  command: string[];
  timeoutMs: number;
  maxBuffer?: number;
}

const findProgram = (name: string): string | undefined => {
  for (const dir of [...(process.env.PATH ?? '').split(delimiter), '/usr/bin', '/usr/sbin', '/bin', '/sbin']) {
    if (dir && existsSync(join(dir, name))) return join(dir, name);
  }
  return undefined;
};

const isRoot = () => process.getuid?.() === 0;

/** Node's install directory (`/usr` for /usr/bin/node), bound read-only so the sandbox can run it. */
export function nodeInstallDir(): string {
  return dirname(dirname(realpathSync(process.execPath)));
}

/**
 * The top-level directories the sandbox gets from the host: /usr, and /lib, /lib64, /bin,
 * /sbin as the symbolic links (merged /usr) or read-only binds they are here.
 */
function systemDirs(): Array<{ path: string; link?: string }> {
  const dirs: Array<{ path: string; link?: string }> = [{ path: '/usr' }];
  for (const path of ['/lib', '/lib64', '/lib32', '/libx32', '/bin', '/sbin']) {
    try {
      const stat = lstatSync(path);
      if (stat.isSymbolicLink()) dirs.push({ path, link: readlinkSync(path) });
      else if (stat.isDirectory()) dirs.push({ path });
    } catch {
      // absent on this host
    }
  }
  const node = nodeInstallDir();
  if (!dirs.some((d) => !d.link && (node === d.path || node.startsWith(`${d.path}/`)))) dirs.push({ path: node });
  return dirs;
}

/** `setpriv` to nobody when we are root: the sandbox's uid outside its namespaces owns nothing of ours. */
function dropToNobody(setpriv: string): string[] {
  return isRoot()
    ? [setpriv, `--reuid=${SANDBOX_UID}`, `--regid=${SANDBOX_UID}`, '--clear-groups', '--no-new-privs', '--']
    : [];
}

function bwrapArgv(bwrap: string, setpriv: string, dir: string, command: string[]): string[] {
  const binds = systemDirs().flatMap(({ path, link }) => (link ? ['--symlink', link, path] : ['--ro-bind', path, path]));
  return [
    ...dropToNobody(setpriv),
    bwrap,
    '--unshare-all', // pid, net, ipc, uts, cgroup, and user where it can
    '--unshare-user', // and user for certain: --disable-userns and --uid need it
    '--uid', String(SANDBOX_UID),
    '--gid', String(SANDBOX_UID),
    '--hostname', 'sandbox',
    '--die-with-parent',
    '--new-session', // no controlling terminal to push input into (TIOCSTI)
    '--clearenv',
    '--cap-drop', 'ALL',
    '--disable-userns', // no nested user namespace to regain capabilities in
    ...binds,
    '--ro-bind', dir, SANDBOX_TOOL_DIR,
    '--proc', '/proc',
    '--dev', '/dev',
    '--size', String(16 * 1024 * 1024), '--tmpfs', '/tmp',
    '--remount-ro', '/',
    '--chdir', SANDBOX_TOOL_DIR,
    '--',
    ...command,
  ];
}

/**
 * The same sandbox with util-linux alone: unshare makes the namespaces (mapping our uid to
 * root inside the new user namespace, which owns the new mount namespace), this script
 * builds a tmpfs root of read-only binds, pivots into it, detaches the old root, and runs
 * the command with every capability dropped (bounding set included) and no_new_privs.
 */
const UNSHARE_SCRIPT = `
set -eu
new=$1; tool=$2; shift 2
mount -t tmpfs -o mode=0755,size=1m sandbox-root "$new"
while [ "$1" != -- ]; do
  path=$1; link=$2; shift 2
  if [ -n "$link" ]; then ln -s "$link" "$new$path"; else
    mkdir -p "$new$path"; mount --rbind "$path" "$new$path"; mount -o remount,bind,ro "$new$path"
  fi
done
shift
mkdir "$new/tool" "$new/proc" "$new/tmp" "$new/dev" "$new/.old"
mount --bind "$tool" "$new/tool"; mount -o remount,bind,ro "$new/tool"
mount -t tmpfs -o mode=1777,size=16m sandbox-tmp "$new/tmp"
for d in null zero random urandom; do touch "$new/dev/$d"; mount --bind "/dev/$d" "$new/dev/$d"; done
mount -t proc -o nosuid,nodev,noexec proc "$new/proc"
cd "$new"; pivot_root . .old; cd /; umount -l /.old; rmdir /.old
mount -o remount,bind,ro /
cd /tool
# A shell stays pid 1, as bwrap's reaper does: the command's parent is then an init that
# ignores its signals, not the command itself (kill(ppid) would otherwise signal pid 0).
exec setpriv --inh-caps=-all --ambient-caps=-all --bounding-set=-all --no-new-privs -- /bin/sh -c '"$@" & wait $!' sandbox-init "$@"
`;

function unshareArgv(unshare: string, setpriv: string, newRoot: string, dir: string, command: string[]): string[] {
  const dirs = systemDirs().flatMap(({ path, link }) => [path, link ?? '']);
  return [
    ...dropToNobody(setpriv),
    unshare,
    '--user', '--map-root-user',
    '--mount', '--propagation', 'private',
    '--pid', '--fork', '--kill-child',
    '--net', '--ipc', '--uts', '--cgroup',
    '/bin/sh', '-c', UNSHARE_SCRIPT, 'sandbox', newRoot, dir, ...dirs, '--',
    ...command,
  ];
}

/** Readable by the sandbox's outside uid (nobody, when we are root): directories a+rx, files a+r. */
async function openToSandbox(path: string): Promise<void> {
  await chmod(path, 0o755);
  for (const entry of await readdir(path, { withFileTypes: true })) {
    const child = join(path, entry.name);
    if (entry.isDirectory()) await openToSandbox(child);
    else if (entry.isFile()) await chmod(child, 0o644);
  }
}

/**
 * A temporary directory the sandbox may read: `<tmp>/microtask-sandbox-XXXX/`, with an
 * empty `root/` the unshare mechanism mounts its new root on. Call {@link openToSandbox}
 * on the tool's directory inside it before running.
 */
export async function sandboxTempDir(): Promise<string> {
  const root = await mkdtemp(join(tmpdir(), 'microtask-sandbox-'));
  await mkdir(join(root, 'root'));
  await chmod(root, 0o755);
  await chmod(join(root, 'root'), 0o755);
  return root;
}

function launch(argv: string[], timeoutMs: number, maxBuffer: number): Promise<SandboxRun> {
  return new Promise((resolve) => {
    execFile(
      argv[0]!,
      argv.slice(1),
      // No environment at all: nothing of ours (API keys, NATS credentials) crosses over.
      { env: {}, cwd: '/', timeout: timeoutMs, killSignal: 'SIGKILL', maxBuffer, encoding: 'utf8' },
      (error, stdout, stderr) => {
        const e = error as (NodeJS.ErrnoException & { killed?: boolean; signal?: NodeJS.Signals; code?: unknown }) | null;
        resolve({
          code: e ? (typeof e.code === 'number' ? e.code : null) : 0,
          signal: e?.signal ?? null,
          stdout,
          stderr,
          timedOut: e?.killed === true && e.code !== 'ERR_CHILD_PROCESS_STDIO_MAXBUFFER',
          overflowed: e?.code === 'ERR_CHILD_PROCESS_STDIO_MAXBUFFER',
        });
      },
    );
  });
}

async function runWith(mechanism: SandboxMechanism, options: SandboxRunOptions, tempRoot: string): Promise<SandboxRun> {
  const setpriv = findProgram('setpriv');
  if (isRoot() && !setpriv) throw new SandboxUnavailableError('setpriv (util-linux) is missing: it is needed to run the sandbox as nobody');
  const maxBuffer = options.maxBuffer ?? 256 * 1024;
  if (mechanism === 'bwrap') {
    return launch(bwrapArgv(findProgram('bwrap')!, setpriv ?? 'setpriv', options.dir, options.command), options.timeoutMs, maxBuffer);
  }
  return launch(
    unshareArgv(findProgram('unshare')!, setpriv ?? 'setpriv', join(tempRoot, 'root'), options.dir, options.command),
    options.timeoutMs,
    maxBuffer,
  );
}

const lastLine = (text: string) => text.trim().split('\n').filter(Boolean).slice(-1)[0] ?? '';

/** Runs `node -e` in the sandbox: the mechanism works here when it prints what it was asked to. */
async function probe(mechanism: SandboxMechanism): Promise<string | undefined> {
  const programs = mechanism === 'bwrap' ? ['bwrap'] : ['unshare', 'mount', 'pivot_root', 'setpriv'];
  const missing = programs.filter((p) => !findProgram(p));
  if (missing.length) return `${missing.join(', ')} not found`;
  const temp = await sandboxTempDir();
  try {
    const dir = join(temp, 'probe');
    await mkdir(dir);
    await openToSandbox(dir);
    const run = await runWith(mechanism, { dir, command: [process.execPath, '-e', 'process.stdout.write(String(process.getuid()))'], timeoutMs: 10_000 }, temp);
    if (run.code === 0 && run.stdout === (mechanism === 'bwrap' ? String(SANDBOX_UID) : '0')) return undefined;
    return run.timedOut ? 'the probe did not finish within 10 s' : lastLine(run.stderr) || `the probe exited with code ${run.code}`;
  } catch (error) {
    return error instanceof Error ? error.message : String(error);
  } finally {
    await rm(temp, { recursive: true, force: true });
  }
}

/** Which mechanism MICROTASK_SANDBOX asks for (`auto` when unset). */
export function sandboxChoice(env: Record<string, string | undefined> = process.env): SandboxChoice {
  const parsed = EnvSchema.shape.MICROTASK_SANDBOX.safeParse(env.MICROTASK_SANDBOX);
  // loadConfig refuses a bad value at start; a library caller that skipped it gets the same words.
  if (!parsed.success) throw new Error(`MICROTASK_SANDBOX=${JSON.stringify(env.MICROTASK_SANDBOX)}: expected one of ${SANDBOX_CHOICES.join(', ')}`);
  return parsed.data;
}

async function detect(choice: SandboxChoice): Promise<SandboxStatus> {
  if (choice === 'none') return { ok: false, reason: 'MICROTASK_SANDBOX=none: generated code is never run here' };
  if (process.platform !== 'linux') {
    return { ok: false, reason: `generated code runs only in a Linux sandbox (namespaces), and this is ${process.platform}` };
  }
  const candidates: SandboxMechanism[] = choice === 'auto' ? ['bwrap', 'unshare'] : [choice];
  const failures: string[] = [];
  for (const mechanism of candidates) {
    const failure = await probe(mechanism);
    if (failure === undefined) return { ok: true, mechanism, outsideUid: isRoot() ? SANDBOX_UID : process.getuid!() };
    failures.push(`${mechanism}: ${failure}`);
  }
  return { ok: false, reason: `no sandbox works on this host (${failures.join('; ')}); ${INSTALL_HINT}` };
}

const detected = new Map<SandboxChoice, Promise<SandboxStatus>>();

/** Whether generated code can run isolated here, and how: probed once per process and choice. */
export function sandboxStatus(choice: SandboxChoice = sandboxChoice()): Promise<SandboxStatus> {
  let status = detected.get(choice);
  if (!status) {
    status = detect(choice);
    detected.set(choice, status);
  }
  return status;
}

/**
 * Runs `command` in the sandbox with the tool's directory `dir` (a directory under a
 * {@link sandboxTempDir}) read-only at /tool. Throws {@link SandboxUnavailableError} when
 * no sandbox works here: generated code is then not run at all.
 */
export async function runSandboxed(options: SandboxRunOptions & { tempRoot: string }): Promise<SandboxRun> {
  const status = await sandboxStatus();
  if (!status.ok) throw new SandboxUnavailableError(status.reason);
  await openToSandbox(options.dir);
  return runWith(status.mechanism, options, options.tempRoot);
}

/** Node flags that close the debugger door where this Node has them (`--disable-sigusr1`: 22.14+, 23.7+). */
export const noDebuggerFlags = (): string[] => (process.allowedNodeEnvironmentFlags.has('--disable-sigusr1') ? ['--disable-sigusr1'] : []);
