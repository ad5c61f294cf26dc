/**
 * The setups the benchmark compares, each able to run one flow and say when it is done:
 *
 * - bare: the same XState machine and microtask actor, no bus, no persistence (the floor);
 * - embedded: a FlowHost in this process (as `microtask run` and the library's orchestrator), state in lmdb;
 * - nats: the daemon over NATS (JetStream work queue, KV snapshots with leases), one
 *   worker process, a nats-server of its own.
 *
 * A flow is started the way a user starts one (embedded: the host's start, as `run` does;
 * NATS: a request on the bus) and is done when it ends (NATS: when its done message arrives).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createActor, toPromise } from 'xstate';
import { createMicrotaskLogic, MicrotaskRunner } from '../src/actors/microtask.js';
import { AnthropicModel } from '../src/actors/model/AnthropicModel.js';
import type { ModelPort } from '../src/actors/model/ModelPort.js';
import { MemoryResultsStore } from '../src/actors/ResultsStore.js';
import type { Bus } from '../src/bus/Bus.js';
import { connectNatsBus } from '../src/bus/NatsBus.js';
import { subjects } from '../src/bus/subjects.js';
import { loadConfig } from '../src/config.js';
import { openEmbeddedState } from '../src/composition.js';
import { FlowHost } from '../src/flowHost.js';
import { provideFlows } from '../src/flows.js';
import { BusJournal } from '../src/journal/BusJournal.js';
import { FileJournal } from '../src/journal/FileJournal.js';
import type { Journal } from '../src/journal/Journal.js';
import { silentLogger } from '../src/log.js';
import { answerSchemas } from '../src/contracts/answers.js';
import { LogResultsStore } from '../src/persistence/LogResultsStore.js';
import { FileSnapshotStore } from '../src/persistence/FileSnapshotStore.js';
import type { SnapshotStore } from '../src/persistence/SnapshotStore.js';
import { startDaemonService } from '../src/services.js';
import { startNatsServer, type NatsServer } from '../src/testing/natsServer.js';
import { benchModel } from './lib.js';
import type { StoredSteps } from './steps.js';

export type Pattern = 'microtask' | 'feedback-loop';

export interface Setup {
  name: string;
  /** Runs one flow to its end; false when it did not end `done`. */
  run(pattern: Pattern, input: Record<string, unknown>): Promise<boolean>;
  close(): Promise<void>;
  /** CPU time (ms) used so far by each process of the setup. */
  cpu?: () => Record<string, number>;
  /** The steps stored for the last flows run (up to 20), to check none is missing (bench/steps.ts). */
  storedSteps?: () => Promise<StoredSteps>;
}

/** CPU time (user + system, ms) of a process, from /proc (Linux); NaN elsewhere. */
export function processCpuMs(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return ((Number(fields[11]) + Number(fields[12])) * 1000) / 100;
  } catch {
    return NaN;
  }
}

const ownCpuMs = () => {
  const usage = process.cpuUsage();
  return (usage.user + usage.system) / 1000;
};

/** The pid of the nats-server listening on `port` (ours: started by startNatsServer). */
function natsServerPid(port: number): number | undefined {
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const args = readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0');
      if (args[0]?.endsWith('nats-server') && args.includes(String(port))) return Number(entry);
    } catch {
      // gone meanwhile
    }
  }
  return undefined;
}

/** Which model answers: the instant scripted one, or the real SDK against a local server. */
export type ModelChoice = { kind: 'scripted' } | { kind: 'sdk'; baseURL: string };

const sdkModel = (baseURL: string) =>
  new AnthropicModel({ apiKey: 'bench-key', baseURL, model: 'claude-bench', maxRetries: 0 });
const modelOf = (choice: ModelChoice): ModelPort => (choice.kind === 'sdk' ? sdkModel(choice.baseURL) : benchModel());

const machineOf = (flows: ReturnType<typeof provideFlows>, pattern: Pattern) =>
  pattern === 'microtask' ? flows.catalog.machineOf('microtask') : flows.catalog.machineOf('feedback-loop');

let bareKeys = 0;

/** The floor: the machine and its microtask actor, in memory, nothing saved or sent. */
export function bareSetup(choice: ModelChoice = { kind: 'scripted' }): Setup {
  const runner = new MicrotaskRunner({ model: modelOf(choice), results: new MemoryResultsStore(), answers: answerSchemas });
  const flows = provideFlows({ microtask: createMicrotaskLogic(runner) });
  return {
    name: 'bare XState (floor)',
    async run(pattern, input) {
      const actor = createActor(machineOf(flows, pattern), { input: { ...input, key: `bare-${++bareKeys}` } as never });
      actor.start();
      const output = (await toPromise(actor)) as { status?: string };
      return output.status === 'done';
    },
    close: async () => undefined,
  };
}

/**
 * A client of the daemon's protocol on `bus`: starts a flow by request, resolves when its
 * done message comes (one subscription for all flows).
 */
export async function protocolClient(bus: Bus) {
  const names = subjects();
  const waiting = new Map<string, (ok: boolean) => void>();
  const early = new Map<string, boolean>();
  /** The last flows started, for the steps check. */
  const recent: string[] = [];
  const subscription = await bus.subscribe(names.flowDone('*'), (message) => {
    const done = message.json() as { flowId: string; status: string; output?: { status?: string } };
    const ok = done.status === 'done' && done.output?.status === 'done';
    const resolve = waiting.get(done.flowId);
    if (resolve) {
      waiting.delete(done.flowId);
      resolve(ok);
    } else early.set(done.flowId, ok);
  });
  return {
    async run(pattern: Pattern, input: Record<string, unknown>): Promise<boolean> {
      const answer = (await bus.request(names.flowStart(pattern), JSON.stringify({ input }), { timeoutMs: 60_000 })).json() as {
        ok: boolean;
        flowId?: string;
        error?: unknown;
      };
      if (!answer.ok || !answer.flowId) throw new Error(`flow not started: ${JSON.stringify(answer.error)}`);
      const flowId = answer.flowId;
      recent.push(flowId);
      if (recent.length > 20) recent.shift();
      if (early.has(flowId)) {
        const ok = early.get(flowId)!;
        early.delete(flowId);
        return ok;
      }
      return new Promise<boolean>((resolve) => waiting.set(flowId, resolve));
    },
    close: () => subscription.unsubscribe(),
    recent: () => [...recent],
  };
}

/** Each flow's step numbers, read with `read` (a store's readSteps, or a journal's step entries). */
async function stepsOf(flowIds: string[], read: (flowId: string) => Promise<Array<{ step: number }>>): Promise<StoredSteps> {
  return Promise.all(flowIds.map(async (flowId) => ({ flowId, steps: (await read(flowId)).map((s) => s.step) })));
}

/**
 * Embedded mode as `microtask run` and the library's orchestrator run flows: a FlowHost in
 * this process, snapshots (every step), microtask results and the journal in one lmdb
 * database; or, `store: 'files'`, the store before it (an fsync'd file per save, a results log).
 */
export async function embeddedSetup(
  options: { model?: ModelChoice; journal?: boolean; name?: string; store?: 'lmdb' | 'files' } = {},
): Promise<Setup> {
  const dir = await mkdtemp(join(tmpdir(), 'bench-embedded-'));
  const model = modelOf(options.model ?? { kind: 'scripted' });
  if (options.store !== 'files') {
    // Embedded mode's state as the composition root builds it for `microtask run` and the
    // orchestrator: snapshots (every step), results, journal and inbox in one lmdb database.
    const state = await openEmbeddedState(loadConfig({ MICROTASK_STATE_DIR: dir }), silentLogger);
    return hostedSetup(options.name ?? 'embedded (FlowHost, lmdb)', {
      runner: new MicrotaskRunner({ model, results: state.results, resultsOrderedBeforeSaves: state.resultsOrderedBeforeSaves, answers: answerSchemas }),
      store: state.store,
      journal: state.journal,
      async close() {
        await state.close();
        await rm(dir, { recursive: true, force: true });
      },
    });
  }
  // The store before lmdb: an fsync'd file per save, a results log (and, asked for, a file journal).
  const runner = new MicrotaskRunner({ model, results: new LogResultsStore(join(dir, 'results')), answers: answerSchemas });
  const journal = options.journal ? new FileJournal({ dir: join(dir, 'journal') }) : undefined;
  const store: SnapshotStore = await FileSnapshotStore.open(join(dir, 'flows'));
  return hostedSetup(options.name ?? 'embedded (FlowHost, fsync’d files)', {
    runner,
    store,
    ...(journal ? { journal } : {}),
    async close() {
      await rm(dir, { recursive: true, force: true });
    },
  });
}
/** Flows run by a FlowHost in this process on the given stores (embeddedSetup's; bench/sqliteInSitu.ts swaps them). */
export function hostedSetup(
  name: string,
  parts: { runner: MicrotaskRunner; store: SnapshotStore; journal?: Journal; close(): Promise<void> },
): Setup {
  const { runner, store, journal } = parts;
  const host = new FlowHost({
    flows: provideFlows({ microtask: createMicrotaskLogic(runner) }),
    store,
    logger: silentLogger,
    outRoot: join(tmpdir(), 'bench-tools'),
    ...(journal ? { journal } : {}),
  });
  /** The last flows started, for the steps check. */
  const recent: string[] = [];
  return {
    name,
    async run(pattern, input) {
      const flowId = await host.start(pattern, input);
      recent.push(flowId);
      if (recent.length > 20) recent.shift();
      const record = await host.finished(flowId)!;
      return record.status === 'done' && (record.output as { status?: string } | undefined)?.status === 'done';
    },
    cpu: () => ({ 'host (this process)': ownCpuMs() }),
    // lmdb keeps the steps with the record; the file store (the one before) only the last snapshot.
    ...(store.readSteps ? { storedSteps: () => stepsOf(recent, (flowId) => store.readSteps!(flowId)) } : {}),
    async close() {
      await host.stop();
      await parts.close();
    },
  };
}

/** Starts `bench/worker.ts` as its own process; resolves when it takes tasks. */
export async function startWorkerProcess(env: Record<string, string>): Promise<ChildProcess> {
  // BENCH_WORKER_PROFILE=<dir>: the worker writes a CPU profile there when it stops.
  const profile = process.env.BENCH_WORKER_PROFILE ? ['--cpu-prof', `--cpu-prof-dir=${process.env.BENCH_WORKER_PROFILE}`] : [];
  const child = spawn(process.execPath, [...profile, '--import', 'tsx', new URL('./worker.ts', import.meta.url).pathname], {
    env: { PATH: process.env.PATH ?? '', ...env },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  await new Promise<void>((resolve, reject) => {
    let out = '';
    child.stdout!.on('data', (chunk: Buffer) => {
      out += chunk.toString();
      if (out.includes('ready')) resolve();
    });
    child.once('exit', (code) => reject(new Error(`bench worker exited with ${code}`)));
  });
  return child;
}

/**
 * NATS mode: a nats-server of its own, the daemon (this process) over it with KV
 * snapshots and leases, and one worker process taking the microtasks off the work queue.
 */
export async function natsSetup(
  options: { model?: ModelChoice; inFlight?: number; name?: string; nats?: NatsServer; journal?: boolean } = {},
): Promise<Setup> {
  const nats = options.nats ?? (await startNatsServer());
  const env: Record<string, string> = {
    NATS_URL: nats.url,
    MICROTASK_LOG_LEVEL: 'silent',
    MICROTASK_WORKER_CONCURRENCY: String(options.inFlight ?? 64),
    MICROTASK_SUBJECT_PREFIX: 'microtask',
    ...(options.model?.kind === 'sdk' ? { BENCH_MODEL: 'sdk', ANTHROPIC_API_KEY: 'bench-key', ANTHROPIC_BASE_URL: options.model.baseURL } : {}),
  };
  const config = loadConfig(env);
  const bus = await connectNatsBus({ servers: [nats.url] });
  // The journal's stream is where NATS mode keeps every step (KV holds the last snapshot).
  const daemon = await startDaemonService(bus, config, silentLogger, { journal: options.journal ?? true });
  const worker = await startWorkerProcess(env);
  const clientBus = await connectNatsBus({ servers: [nats.url] });
  const serverPid = natsServerPid(nats.port);
  const client = await protocolClient(clientBus);
  const journal = options.journal === false ? undefined : await BusJournal.open(clientBus);
  return {
    name: options.name ?? 'NATS (JetStream queue, KV snapshots, 1 worker process)',
    run: client.run,
    ...(journal
      ? { storedSteps: () => stepsOf(client.recent(), async (flowId) => (await journal.read(flowId)).filter((e) => e.kind === 'step') as Array<{ step: number }>) }
      : {}),
    cpu: () => ({
      'daemon + client': ownCpuMs(),
      worker: processCpuMs(worker.pid!),
      'nats-server': serverPid === undefined ? NaN : processCpuMs(serverPid),
    }),
    async close() {
      worker.kill('SIGTERM');
      await new Promise((resolve) => worker.once('exit', resolve));
      await client.close();
      await clientBus.close();
      await daemon.stop();
      await bus.close();
      if (!options.nats) await nats.close();
    },
  };
}
