import { execFile, execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { promisify } from 'node:util';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { connect } from '@nats-io/transport-node';
import { afterAll, describe, expect, it } from 'vitest';
import { EnvSchema } from '../src/config.js';
import { findNatsServer, freePort, startNatsServer } from '../src/testing/natsServer.js';

// The deployment (docker-compose.yml, Dockerfile, deploy/nats.conf, .env.example) as
// processes on this machine: there is no Docker here, so the test runs what the compose
// file would run (the image's entrypoint with each service's command and environment)
// against a nats-server started with deploy/nats.conf, and drives it with a plain NATS
// client. It also keeps the compose file from drifting away from src/config.ts.

const ROOT = new URL('..', import.meta.url).pathname;
const execFileAsync = promisify(execFile);
const read = (path: string) => readFile(join(ROOT, path), 'utf8');
const children: ChildProcess[] = [];
const tempDirs: string[] = [];
afterAll(async () => {
  children.forEach((c) => c.exitCode === null && c.signalCode === null && c.kill('SIGKILL'));
  await Promise.all(tempDirs.map((dir) => rm(dir, { recursive: true, force: true })));
});

// ---- a strict reader for the YAML subset the compose file uses --------------------------
// Block mappings and sequences, plain and quoted scalars, JSON-style flow sequences,
// anchors, aliases and `<<` merges. Anything else (block strings, flow mappings, tabs)
// throws, so the compose file cannot grow a construct this test would misread.

type Yaml = string | number | boolean | null | Yaml[] | { [key: string]: Yaml };
interface Line {
  no: number;
  indent: number;
  text: string;
}
const MAP_ENTRY = /^("[^"]*"|'[^']*'|[^\s"'#[\]{}&*!|>%@`-][^:]*?|-[^\s:][^:]*?):(?:\s+(.*))?$/;

function stripComment(raw: string): string {
  let quote: string | undefined;
  for (let i = 0; i < raw.length; i++) {
    const c = raw[i]!;
    if (quote) {
      if (c === '\\' && quote === '"') i++;
      else if (c === quote) quote = undefined;
    } else if ((c === '"' || c === "'") && (i === 0 || ' [,'.includes(raw[i - 1]!))) quote = c;
    else if (c === '#' && (i === 0 || raw[i - 1] === ' ')) return raw.slice(0, i).trimEnd();
  }
  return raw.trimEnd();
}

function parseYaml(source: string): Yaml {
  const lines: Line[] = [];
  source.split('\n').forEach((raw, index) => {
    if (raw.includes('\t')) throw new Error(`line ${index + 1}: tabs are not YAML indentation`);
    const text = stripComment(raw);
    if (text.trim()) lines.push({ no: index + 1, indent: text.length - text.trimStart().length, text: text.trim() });
  });
  const anchors = new Map<string, Yaml>();
  let i = 0;
  const fail = (line: Line, why: string): never => {
    throw new Error(`line ${line.no}: ${why}: ${line.text}`);
  };
  const isItem = (line: Line | undefined, indent: number) => line?.indent === indent && (line.text === '-' || line.text.startsWith('- '));

  function scalar(text: string, line: Line): Yaml {
    if (text.startsWith('*')) {
      if (!anchors.has(text.slice(1))) fail(line, 'unknown alias');
      return structuredClone(anchors.get(text.slice(1))!);
    }
    if (text.startsWith('"')) return text.endsWith('"') && text.length > 1 ? (JSON.parse(text) as string) : fail(line, 'unclosed string');
    if (text.startsWith("'")) return text.endsWith("'") && text.length > 1 ? text.slice(1, -1).replaceAll("''", "'") : fail(line, 'unclosed string');
    if (text.startsWith('[')) {
      try {
        return JSON.parse(text) as Yaml[];
      } catch {
        return fail(line, 'a flow sequence this reader takes must be JSON');
      }
    }
    if (/^[{|>&!%@`]/.test(text)) return fail(line, 'not in the YAML subset this test reads');
    if (/^-?\d+$/.test(text)) return Number(text);
    if (text === 'true' || text === 'false') return text === 'true';
    if (text === 'null' || text === '~') return null;
    return text;
  }

  function node(parentIndent: number): Yaml {
    const line = lines[i];
    if (!line || line.indent < parentIndent) return null;
    return isItem(line, line.indent) ? sequence(line.indent) : mapping(line.indent);
  }

  function sequence(indent: number): Yaml[] {
    const items: Yaml[] = [];
    while (isItem(lines[i], indent)) {
      const line = lines[i]!;
      const rest = line.text.slice(1).trim();
      if (rest === '') {
        i++;
        items.push(node(indent + 1));
      } else if (MAP_ENTRY.test(rest)) {
        // `- key: value`: a mapping whose keys line up with `key`.
        lines[i] = { no: line.no, indent: indent + 2, text: rest };
        items.push(mapping(indent + 2));
      } else {
        i++;
        items.push(scalar(rest, line));
      }
    }
    return items;
  }

  function mapping(indent: number): { [key: string]: Yaml } {
    const explicit: { [key: string]: Yaml } = {};
    const merged: { [key: string]: Yaml } = {};
    while (i < lines.length && lines[i]!.indent === indent && !isItem(lines[i], indent)) {
      const line = lines[i]!;
      const entry = MAP_ENTRY.exec(line.text) ?? fail(line, 'expected `key: value`');
      const key = /^["']/.test(entry[1]!) ? (scalar(entry[1]!, line) as string) : entry[1]!;
      let rest = entry[2] ?? '';
      let anchor: string | undefined;
      if (rest.startsWith('&')) {
        [, anchor, rest = ''] = /^&(\S+)\s*(.*)$/.exec(rest)!;
      }
      i++;
      const nested = lines[i] && (lines[i]!.indent > indent || isItem(lines[i], indent));
      const value = rest !== '' ? scalar(rest, line) : nested ? node(indent) : null;
      if (anchor) anchors.set(anchor, value);
      if (key === '<<') {
        if (!value || typeof value !== 'object' || Array.isArray(value)) fail(line, 'a merge takes a mapping');
        Object.assign(merged, value);
      } else if (key in explicit) fail(line, 'duplicate key');
      else explicit[key] = value;
    }
    const next = lines[i];
    if (next && next.indent > indent) fail(next, 'unexpected indentation');
    return { ...merged, ...explicit };
  }

  const root = node(0);
  if (i < lines.length) fail(lines[i]!, 'unexpected content');
  return root;
}

/** Compose's interpolation: `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `$$`. */
function interpolate(value: string, env: Record<string, string>): string {
  return value.replace(/\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)([^}]*))?\}/g, (match, name?: string, op?: string, fallback?: string) => {
    if (match === '$$') return '$';
    const set = env[name!];
    if (op === ':-') return set ? set : (fallback ?? '');
    if (op === '-') return set !== undefined ? set : (fallback ?? '');
    return set ?? '';
  });
}

/** KEY=value lines of a dotenv file (comments and blanks skipped). */
function parseDotenv(text: string): Record<string, string> {
  const env: Record<string, string> = {};
  for (const line of text.split('\n')) {
    const m = /^([A-Za-z_][A-Za-z0-9_]*)=(.*)$/.exec(line.trim());
    if (m) env[m[1]!] = m[2]!;
  }
  return env;
}

type Service = { command?: string[]; environment?: Record<string, string>; deploy?: { replicas?: number }; stop_grace_period?: string; [k: string]: Yaml | undefined };
async function composeFile() {
  return parseYaml(await read('docker-compose.yml')) as { services: Record<string, Service>; volumes?: Record<string, Yaml> };
}

const seconds = (duration: string) => {
  const m = /^(?:(\d+)m)?(?:(\d+)s)?$/.exec(duration);
  if (!m || (!m[1] && !m[2])) throw new Error(`not a duration this test reads: ${duration}`);
  return Number(m[1] ?? 0) * 60 + Number(m[2] ?? 0);
};

/** The nats-server version, e.g. [2, 9, 10]. */
function natsServerVersion(): number[] {
  const out = execFileSync(findNatsServer(), ['--version'], { encoding: 'utf8' });
  const m = /v(\d+)\.(\d+)\.(\d+)/.exec(out) ?? [];
  return [Number(m[1]), Number(m[2]), Number(m[3])];
}

/** The `jetstream { ... }` block of a nats-server config. */
function jetstreamBlock(conf: string): string {
  const start = /^\s*jetstream\s*[:=]?\s*\{/m.exec(conf);
  if (!start) return '';
  const from = start.index + start[0].length;
  return conf.slice(from, conf.indexOf('}', from));
}

describe('the deployment files', () => {
  it('the compose file sets only variables src/config.ts knows, and .env.example only ones the compose file passes on', async () => {
    const compose = await composeFile();
    const known = new Set(Object.keys(EnvSchema.shape));
    for (const name of ['daemon', 'worker']) {
      const keys = Object.keys(compose.services[name]?.environment ?? {});
      expect(keys.length, name).toBeGreaterThan(0);
      expect(keys.filter((k) => !known.has(k)), `${name}: variables src/config.ts does not know`).toEqual([]);
    }
    const example = parseDotenv(await read('.env.example'));
    expect(Object.keys(example).filter((k) => !known.has(k)), '.env.example: variables src/config.ts does not know').toEqual([]);
    // A variable in .env.example that the compose file never interpolates would be set in vain.
    const composeText = await read('docker-compose.yml');
    expect(Object.keys(example).filter((k) => !composeText.includes(`\${${k}:-`))).toEqual([]);
    expect(Object.values(example).filter(Boolean), '.env.example holds no values, let alone secrets').toEqual([]);
  });

  it('deploy/nats.conf turns JetStream on with an fsync on every write', async () => {
    const block = jetstreamBlock(await read('deploy/nats.conf'));
    expect(block).toMatch(/^\s*store_dir\s*[:=]\s*\/data\s*$/m);
    expect(block).toMatch(/^\s*sync_interval\s*[:=]\s*always\s*$/m);
  });

  it("deploy/nats.conf's authorization block, uncommented as the README says, admits only NATS_TOKEN", async () => {
    const conf = (await readFile(await natsConfForThisServer(), 'utf8')).replace(/^# authorization \{\n#   (token: \$NATS_TOKEN)\n# \}$/m, 'authorization {\n  $1\n}');
    expect(conf).toMatch(/^authorization \{$/m);
    const dir = await mkdtemp(join(tmpdir(), 'deploy-auth-'));
    await writeFile(join(dir, 'nats.conf'), conf);
    // The server reads $NATS_TOKEN from its environment (compose passes it to the nats service).
    const saved = process.env.NATS_TOKEN;
    process.env.NATS_TOKEN = 'deploy-test-token';
    let nats;
    try {
      nats = await startNatsServer({ args: ['-c', join(dir, 'nats.conf'), '-m', String(await freePort())] });
    } finally {
      if (saved === undefined) delete process.env.NATS_TOKEN;
      else process.env.NATS_TOKEN = saved;
    }
    await using _server = nats;
    await expect(connect({ servers: nats.url, maxReconnectAttempts: 0 })).rejects.toThrow(/Authorization Violation/);
    const client = await connect({ servers: nats.url, token: 'deploy-test-token' });
    await client.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('the image runs dist/cli.js as a non-root user, with the state in /data, and ships the offline cassette', async () => {
    const dockerfile = await read('Dockerfile');
    const entrypoint = /^ENTRYPOINT\s+(\[.*\])\s*$/m.exec(dockerfile);
    expect(JSON.parse(entrypoint![1]!)).toEqual(['node', 'dist/cli.js']);
    const runtime = dockerfile.slice(dockerfile.lastIndexOf('\nFROM '));
    expect(runtime).toMatch(/^USER node$/m);
    expect(runtime).toMatch(/MICROTASK_STATE_DIR=\/data/);
    expect(runtime).toMatch(/^RUN npm ci --omit=dev/m);
    expect(runtime).toMatch(/^COPY --from=build \/app\/dist \.\/dist$/m);
    expect(runtime).toMatch(/^COPY examples \.\/examples$/m);
    const dockerignore = (await read('.dockerignore')).split('\n');
    expect(dockerignore).toEqual(expect.arrayContaining(['node_modules', 'dist', '.env', '.microtask']));
  });
});

// ---- the processes ----------------------------------------------------------------------

type LogEntry = { level: number; msg: string; taskId?: string };
interface RunningService extends ChildProcess {
  service: string;
  log(): string;
  entries(): LogEntry[];
}

/** The image's entrypoint with a service's command, run from the repository (dist/ is built by npm test). */
async function startService(service: string, command: string[], env: Record<string, string>): Promise<RunningService> {
  const entrypoint = JSON.parse(/^ENTRYPOINT\s+(\[.*\])\s*$/m.exec(await read('Dockerfile'))![1]!) as string[];
  expect(entrypoint[0]).toBe('node');
  const child = spawn(process.execPath, [...entrypoint.slice(1), ...command], { cwd: ROOT, env, stdio: ['ignore', 'ignore', 'pipe'] });
  children.push(child);
  let log = '';
  child.stderr!.on('data', (chunk: Buffer) => (log += chunk.toString()));
  const entries = () =>
    log.split('\n').flatMap((line) => {
      try {
        return [JSON.parse(line) as LogEntry];
      } catch {
        return [];
      }
    });
  return Object.assign(child, { service, log: () => log, entries });
}

async function waitForLog(child: RunningService, msg: RegExp, timeoutMs = 20_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!child.entries().some((e) => msg.test(e.msg))) {
    if (child.exitCode !== null) throw new Error(`${child.service} exited with ${child.exitCode} before logging ${msg}:\n${child.log()}`);
    if (Date.now() > until) throw new Error(`${child.service}: no log matching ${msg} within ${timeoutMs} ms:\n${child.log()}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Keys of the microtasks a worker ran (it logs `microtask done` with each task's key). */
const tasksRun = (worker: RunningService) => worker.entries().filter((e) => e.msg === 'microtask done' && e.taskId).map((e) => e.taskId!);

type ToolDone = {
  flowId: string;
  status: string;
  output: { status: string; name: string; dir: string; files: string[]; modules: Array<{ name: string; code?: string }>; entry: { entry: string; readme: string } };
};

/** What a client that knows only docs/protocol.md does: request a tool build, read its done message from the stream. */
async function buildToolOverNats(url: string, requestId: string): Promise<ToolDone> {
  const client = await connect({ servers: url });
  try {
    const spec = JSON.parse(await read('examples/api-tester.json')) as Record<string, unknown>;
    const reply = await client.request('microtask.toolbuild.request', JSON.stringify({ ...spec, requestId }), { timeout: 10_000 });
    const answer = reply.json<{ ok: boolean; flowId: string }>();
    expect(answer).toMatchObject({ ok: true });
    const consumer = await jetstream(client).consumers.get('MICROTASK_LOG_flows', { filter_subjects: `microtask.flow.${answer.flowId}.done` });
    const message = await consumer.next({ expires: 60_000 });
    expect(message, 'the done message within 60 s').toBeTruthy();
    const done = message!.json<ToolDone>();
    expect(done).toMatchObject({ flowId: answer.flowId, status: 'done', output: { status: 'done', name: 'api-tester' } });
    // A client on another machine gets the tool's contents in the done message itself:
    // every module's code, the entry point and the README (the files are on the daemon's disk).
    for (const module of done.output.modules) expect(module.code, module.name).toEqual(expect.stringContaining('export'));
    expect(done.output.entry).toEqual({ entry: expect.stringContaining('import'), readme: expect.stringContaining('api-tester') });
    return done;
  } finally {
    await client.close();
  }
}

/**
 * `docker compose stop`: SIGTERM, then SIGKILL after stop_grace_period. Each must exit 0
 * by itself within it.
 */
async function stopAll(processes: Array<{ child: RunningService; graceSeconds: number }>) {
  const results = await Promise.all(
    processes.map(async ({ child, graceSeconds }) => {
      const exit = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
      child.kill('SIGTERM');
      let timer: NodeJS.Timeout | undefined;
      const late = new Promise<'late'>((resolve) => (timer = setTimeout(() => resolve('late'), graceSeconds * 1000)));
      const code = await Promise.race([exit, late]);
      clearTimeout(timer);
      if (code === 'late') child.kill('SIGKILL');
      return { service: child.service, code, log: code === 0 ? '' : child.log().slice(-2_000) };
    }),
  );
  for (const result of results) expect(result, result.log).toMatchObject({ code: 0 });
}

/** Each service's environment as compose gives it with the committed .env.example (every value empty: the defaults). */
async function composeEnvironment(service: Service): Promise<Record<string, string>> {
  const dotenv = parseDotenv(await read('.env.example'));
  return {
    ...Object.fromEntries(Object.entries(service.environment ?? {}).map(([k, v]) => [k, interpolate(String(v), dotenv)])),
    PATH: process.env.PATH ?? '',
  };
}

/** A copy of deploy/nats.conf this nats-server takes, with the store given on the command line instead. */
async function natsConfForThisServer(): Promise<string> {
  // Debian's 2.9.10 rejects sync_interval (2.10 added it): an older server gets a copy
  // without that line. nats-server refuses store_dir both in the file and on the command
  // line, and startNatsServer gives a temporary one there. The other keys are the file's.
  const [major, minor] = natsServerVersion();
  let conf = (await read('deploy/nats.conf')).replace(/^\s*store_dir\s*[:=].*$/m, '');
  if (!(major! > 2 || (major === 2 && minor! >= 10))) conf = conf.replace(/^\s*sync_interval\s*[:=].*$/m, '');
  const dir = await mkdtemp(join(tmpdir(), 'deploy-conf-'));
  tempDirs.push(dir);
  await writeFile(join(dir, 'nats.conf'), conf);
  return join(dir, 'nats.conf');
}

describe('the compose topology as processes: nats-server, a daemon, two workers', () => {
  it('builds a tool requested by a plain NATS client; both workers take tasks; all stop cleanly on SIGTERM', async () => {
    const compose = await composeFile();
    const { daemon: daemonService, worker: workerService, nats: natsService } = compose.services;
    expect(daemonService && workerService && natsService).toBeTruthy();

    // nats-server with deploy/nats.conf; the command line sets the port, the store and the
    // monitoring port (flags override the file), so it never collides with one on 4222/8222.
    const monitorPort = await freePort();
    await using nats = await startNatsServer({ args: ['-c', await natsConfForThisServer(), '-m', String(monitorPort)] });
    // The compose health check's URL, on this server's monitoring port.
    const healthcheck = (natsService!.healthcheck as { test: string[] }).test;
    const healthUrl = new URL(healthcheck[healthcheck.length - 1]!);
    healthUrl.port = String(monitorPort);
    const health = await fetch(healthUrl);
    expect(health.status).toBe(200);
    expect(await health.json()).toMatchObject({ status: 'ok' });
    const jsz = (await (await fetch(`http://127.0.0.1:${monitorPort}/jsz`)).json()) as { config: { store_dir: string } };
    expect(jsz.config.store_dir.startsWith(nats.storeDir)).toBe(true);

    // Only what names this host's resources differs from compose: the NATS URL, the state
    // directory (/data in the container) and the inspector's port.
    expect((await composeEnvironment(daemonService!)).NATS_URL).toBe('nats://nats:4222');
    const state = await mkdtemp(join(tmpdir(), 'deploy-state-'));
    const daemonEnv = {
      ...(await composeEnvironment(daemonService!)),
      NATS_URL: nats.url,
      MICROTASK_STATE_DIR: state,
      MICROTASK_INSPECTOR_HOST: '127.0.0.1',
      MICROTASK_INSPECTOR_PORT: String(await freePort()),
      // Each container has its own 9464; here they share one host.
      MICROTASK_HTTP_PORT: String(await freePort()),
    };
    const workerEnv = async () => ({ ...(await composeEnvironment(workerService!)), NATS_URL: nats.url, MICROTASK_HTTP_PORT: String(await freePort()) });

    const replicas = workerService!.deploy?.replicas ?? 1;
    expect(replicas).toBe(2);
    const daemon = await startService('daemon', daemonService!.command!, daemonEnv);
    const workerEnvs = await Promise.all(Array.from({ length: replicas }, workerEnv));
    const workers = await Promise.all(workerEnvs.map((env, n) => startService(`worker-${n + 1}`, workerService!.command!, env)));
    await waitForLog(daemon, /^daemon serving$/);
    for (const worker of workers) await waitForLog(worker, /^worker taking tasks/);
    // The compose health checks, run as Docker runs them (in the service's environment): ready.
    for (const [service, env] of [[daemonService!, daemonEnv], ...workerEnvs.map((env) => [workerService!, env] as const)] as const) {
      const [kind, command, ...args] = (service.healthcheck as { test: string[] }).test;
      expect(kind).toBe('CMD');
      await expect(execFileAsync(command!, args, { env, timeout: 10_000 })).resolves.toBeDefined();
    }

    const done = await buildToolOverNats(nats.url, 'deploy-test-1');
    // The tool's files are on the daemon's disk (its /data volume in compose).
    expect(done.output.dir).toBe(join(state, 'tools', 'api-tester'));
    const written = (await readdir(join(done.output.dir, 'src'))).sort();
    expect(written).toEqual(done.output.files.filter((f) => f.startsWith('src/')).map((f) => f.slice(4)).sort());

    // Both workers ran microtasks, no task ran twice, and the daemon ran none itself.
    const perWorker = workers.map(tasksRun);
    for (const [n, tasks] of perWorker.entries()) expect(tasks.length, `tasks run by worker ${n + 1}`).toBeGreaterThan(0);
    expect(new Set(perWorker.flat()).size).toBe(perWorker.flat().length);
    expect(daemon.entries().filter((e) => e.msg === 'microtask done')).toEqual([]);

    // stop_grace_period leaves the configured grace (MICROTASK_SHUTDOWN_GRACE_MS) and time to save and close.
    for (const service of [daemonService!, workerService!]) {
      const { MICROTASK_SHUTDOWN_GRACE_MS: graceMs } = EnvSchema.parse(await composeEnvironment(service));
      expect(seconds(service.stop_grace_period!) * 1000).toBeGreaterThanOrEqual(graceMs + 10_000);
    }
    await stopAll([
      { child: daemon, graceSeconds: seconds(daemonService!.stop_grace_period!) },
      ...workers.map((child) => ({ child, graceSeconds: seconds(workerService!.stop_grace_period!) })),
    ]);
    await rm(state, { recursive: true, force: true });
  }, 120_000);
});

describe('several machines against one NATS cluster', () => {
  it('two daemons and two workers, each with its own disk, on different nodes of a 3-node JetStream cluster', async () => {
    // Three clustered nats-servers (as on three hosts); JetStream is up once the cluster elects a leader.
    const routePorts = [await freePort(), await freePort(), await freePort()];
    const routes = routePorts.map((p) => `nats://127.0.0.1:${p}`).join(',');
    const nodes = await Promise.all(
      routePorts.map((port, n) =>
        startNatsServer({ args: ['-n', `node-${n + 1}`, '--cluster_name', 'microtask-test', '--cluster', `nats://127.0.0.1:${port}`, '--routes', routes] }),
      ),
    );
    await using _cluster = { [Symbol.asyncDispose]: () => Promise.all(nodes.map((n) => n.close())).then(() => undefined) };
    const admin = await connect({ servers: nodes[0]!.url });
    const jsm = await jetstreamManager(admin, { checkAPI: false, timeout: 2_000 });
    for (let i = 0; ; i++) {
      const ready = await jsm.getAccountInfo().then(() => true, () => false);
      if (ready) break;
      if (i > 10) throw new Error('the JetStream cluster elected no leader within 20 s');
    }

    // Each process as if on its own machine: its own state directory, temp directory and
    // home; NATS_URL lists its nearest node first, then another (it fails over between them).
    const compose = await composeFile();
    const disks: string[] = [];
    const machine = async (service: Service, nearest: number, extra: Record<string, string> = {}) => {
      const disk = await mkdtemp(join(tmpdir(), 'deploy-machine-'));
      disks.push(disk);
      return {
        ...(await composeEnvironment(service)),
        NATS_URL: `${nodes[nearest]!.url},${nodes[(nearest + 1) % 3]!.url}`,
        MICROTASK_STATE_DIR: join(disk, 'state'),
        TMPDIR: disk,
        HOME: disk,
        // As the README says for a cluster: three copies of every stream and bucket.
        MICROTASK_STREAM_REPLICAS: '3',
        MICROTASK_HTTP_HOST: '127.0.0.1',
        MICROTASK_HTTP_PORT: String(await freePort()),
        ...extra,
      };
    };
    const daemonEnv = (n: number) => machine(compose.services.daemon!, n, { MICROTASK_INSPECTOR_HOST: '127.0.0.1', MICROTASK_INSPECTOR_PORT: '0' });
    const envs = [await daemonEnv(0), await daemonEnv(1)];
    const daemons = [await startService('daemon-1', ['daemon'], envs[0]!), await startService('daemon-2', ['daemon'], envs[1]!)];
    const workers = [
      await startService('worker-1', ['worker'], await machine(compose.services.worker!, 1)),
      await startService('worker-2', ['worker'], await machine(compose.services.worker!, 2)),
    ];
    for (const daemon of daemons) await waitForLog(daemon, /^daemon serving$/);
    for (const worker of workers) await waitForLog(worker, /^worker taking tasks/);

    // MICROTASK_STREAM_REPLICAS=3: every stream and bucket the processes made has three
    // copies; a restart keeps them.
    const streams: string[] = [];
    for await (const info of jsm.streams.list()) {
      streams.push(info.config.name);
      expect(info.config.num_replicas, info.config.name).toBe(3);
    }
    expect(streams).toEqual(expect.arrayContaining(['MICROTASK_WQ_tasks', 'KV_MICROTASK_snapshots', 'KV_MICROTASK_results', 'KV_MICROTASK_flows', 'MICROTASK_LOG_flows', 'MICROTASK_LOG_history']));
    workers[1]!.kill('SIGTERM');
    await new Promise((resolve) => workers[1]!.once('exit', resolve));
    workers[1] = await startService('worker-2', ['worker'], await machine(compose.services.worker!, 2));
    await waitForLog(workers[1], /^worker taking tasks/);

    // A client on the third node.
    const done = await buildToolOverNats(nodes[2]!.url, 'deploy-cluster-1');
    // The tool is on the disk of the daemon that ran the flow, and only there.
    const ranIt = envs.findIndex((env) => done.output.dir === join(env.MICROTASK_STATE_DIR, 'tools', 'api-tester'));
    expect(ranIt, `${done.output.dir} is on neither daemon's disk`).toBeGreaterThanOrEqual(0);
    expect((await readdir(done.output.dir)).sort()).toEqual(['README.md', 'package.json', 'src']);
    await expect(readdir(join(envs[1 - ranIt]!.MICROTASK_STATE_DIR, 'tools', 'api-tester'))).rejects.toThrow();

    for (const [n, worker] of workers.entries()) expect(tasksRun(worker).length, `tasks run by worker ${n + 1}`).toBeGreaterThan(0);
    for (const daemon of daemons) expect(daemon.entries().filter((e) => e.msg === 'microtask done')).toEqual([]);
    for (const name of streams) expect((await jsm.streams.info(name)).config.num_replicas, name).toBe(3);
    await admin.close();
    await stopAll([...daemons, ...workers].map((child) => ({ child, graceSeconds: 30 })));
    await Promise.all(disks.map((disk) => rm(disk, { recursive: true, force: true })));
  }, 120_000);
});
