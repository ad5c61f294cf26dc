/**
 * A process that runs a daemon (its flows check generated code in the type-check pool),
 * starts a slow type-check as a tool build does, and stops the daemon while the check runs.
 * It prints one JSON line at each point; test/daemonStop.test.ts times its exit.
 */
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { checkModule } from '../../src/actors/toolCheck.js';
import { MemoryBus } from './MemoryBus.js';
import { Daemon } from '../../src/daemon/Daemon.js';
import { provideFlows } from '../../src/flows.js';
import { silentLogger } from '../../src/log.js';
import { FileSnapshotStore } from '../../src/persistence/FileSnapshotStore.js';
import { scripted } from './flows.js';

const say = (what: Record<string, unknown>) => process.stdout.write(`${JSON.stringify({ ...what, at: Date.now() })}\n`);

const dir = await mkdtemp(join(tmpdir(), 'daemon-stop-'));
const bus = new MemoryBus();
const daemon = new Daemon({
  bus,
  flows: provideFlows({ microtask: scripted(['unused']).microtask }),
  store: await FileSnapshotStore.open(join(dir, 'flows')),
  logger: silentLogger,
  outRoot: dir,
});
await daemon.start();

// Large enough that the compiler works on it for seconds.
const lines = Number(process.argv[2] ?? 150_000);
const code = `export function login() { return 1; }\n${Array.from({ length: lines }, (_, i) => `export const v${i} = { n: ${i}, s: "s${i}" }.n;`).join('\n')}\n`;
const spec = { name: 'slow', description: 'a tool', modules: [{ name: 'auth', purpose: 'logs in' }] };
void checkModule(spec, 'auth', code).then(
  () => say({ check: 'finished' }),
  (e: unknown) => say({ check: 'stopped', message: (e as Error).message }),
);
say({ check: 'started' });
// The thread takes the check, loads the compiler and is at work by then.
await new Promise((resolve) => setTimeout(resolve, 1_500));
await daemon.stop();
await bus.close();
say({ daemon: 'stopped' });
