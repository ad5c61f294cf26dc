import { execFile } from 'node:child_process';
import { cp, mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

// The layer rule as `npm test` runs it: the project's .dependency-cruiser.cjs, through
// dependency-cruiser's own command line, over a tree whose paths look like src/.
const ROOT = new URL('..', import.meta.url).pathname;
const CONFIG = join(ROOT, '.dependency-cruiser.cjs');
const DEPCRUISE = join(ROOT, 'node_modules/dependency-cruiser/bin/dependency-cruise.mjs');
const FIXTURE = join(ROOT, 'test/fixtures/depcruise');

const depcruise = (cwd: string) =>
  promisify(execFile)(process.execPath, [DEPCRUISE, 'src', '--config', CONFIG], { cwd }).then(
    ({ stdout }) => ({ code: 0, stdout }),
    (e: { code: number; stdout: string; stderr: string }) => ({ code: e.code, stdout: e.stdout + e.stderr }),
  );

/** One import across each boundary, in a file of its own or as the first line of one. */
const violations: { rule: string; edge: string; file: string; source: string; prepend?: boolean }[] = [
  {
    rule: 'machines-pure',
    edge: 'src/machines/readsDisk.ts → fs',
    file: 'src/machines/readsDisk.ts',
    source: "import { readFileSync } from 'node:fs';\nexport const read = readFileSync;\n",
  },
  {
    // A type-only import still ties the pure layer to the actor's file.
    rule: 'machines-pure',
    edge: 'src/machines/knowsRunner.ts → src/actors/runner.ts',
    file: 'src/machines/knowsRunner.ts',
    source: "import type { readCount } from '../actors/runner.js';\nexport type Reader = typeof readCount;\n",
  },
  {
    rule: 'contracts-pure',
    edge: 'src/contracts/withMachine.ts → src/machines/counter.ts',
    file: 'src/contracts/withMachine.ts',
    source: "import type { counterMachine } from '../machines/counter.js';\nexport type Counter = typeof counterMachine;\n",
  },
  {
    rule: 'actors-not-machines',
    edge: 'src/actors/stepper.ts → src/machines/steps.ts',
    file: 'src/actors/stepper.ts',
    source: "import type { step } from '../machines/steps.js';\nexport type Step = typeof step;\n",
  },
  {
    // The bus double is the tests': production code that imported it would ship it.
    rule: 'src-not-tests',
    edge: 'src/bus/NatsBus.ts → test/support/MemoryBus.ts',
    file: 'src/bus/NatsBus.ts',
    source: "import { MemoryBus } from '../../test/support/MemoryBus.js';\nexport const fallback = MemoryBus;\n",
    prepend: true,
  },
  {
    // A store built outside the composition root decides the mode a second time.
    rule: 'stores-from-composition',
    edge: 'src/flowHost.ts → src/persistence/LmdbSnapshotStore.ts',
    file: 'src/flowHost.ts',
    source: "import { LmdbSnapshotStore } from './persistence/LmdbSnapshotStore.js';\nexport const ownStore = () => new LmdbSnapshotStore();\n",
    prepend: true,
  },
  {
    rule: 'flowHost-not-daemon',
    edge: 'src/flowHost.ts → src/daemon/protocol.ts',
    file: 'src/flowHost.ts',
    source: "import type { FlowRecord } from './daemon/protocol.js';\nexport type Listed = FlowRecord;\n",
    prepend: true,
  },
  {
    rule: 'services-not-cli',
    edge: 'src/services.ts → src/cli/exitCodes.ts',
    file: 'src/services.ts',
    source: "import { ExitCode } from './cli/exitCodes.js';\nexport const usage = ExitCode.usage;\n",
    prepend: true,
  },
  {
    // The cycle runFlow ↔ runtime had in src; reported once, from the first file of it.
    rule: 'no-circular',
    edge: 'src/runFlow.ts → src/runtime.ts → src/runFlow.ts',
    file: 'src/runFlow.ts',
    source: "import type { Runtime } from './runtime.js';\nexport const runFlow = (runtime: Runtime) => runtime;\n",
  },
];
const cycleCloser = { file: 'src/runtime.ts', source: "import { runFlow } from './runFlow.js';\nexport interface Runtime { run: typeof runFlow }\n" };

describe('the layer rule (.dependency-cruiser.cjs, run by npm test)', () => {
  let clean: string;
  let broken: string;

  // Two copies of the fixture tree: as it is, and with every violation added. Each resolves
  // xstate and zod from the project's node_modules.
  const copy = async () => {
    const dir = await mkdtemp(join(tmpdir(), 'layers-'));
    await cp(FIXTURE, dir, { recursive: true });
    await symlink(join(ROOT, 'node_modules'), join(dir, 'node_modules'), 'dir');
    return dir;
  };

  beforeAll(async () => {
    clean = await copy();
    broken = await copy();
    for (const v of [...violations, cycleCloser]) {
      const path = join(broken, v.file);
      const before = 'prepend' in v && v.prepend ? await readFile(path, 'utf8') : '';
      await writeFile(path, v.source + before);
    }
  });
  afterAll(async () => {
    await Promise.all([clean, broken].map((dir) => dir && rm(dir, { recursive: true, force: true })));
  });

  it('passes the fixture tree as it is (every violation below is the one import added)', async () => {
    const { code, stdout } = await depcruise(clean);
    expect(stdout).toContain('no dependency violations found');
    expect(code).toBe(0);
  }, 60_000);

  it('names each import across a boundary, type-only ones too, and fails', async () => {
    const { code, stdout } = await depcruise(broken);
    // A cycle's path is printed over several lines.
    const report = stdout.replace(/\s*\n\s*/g, ' ');
    for (const v of violations) expect(report).toContain(`error ${v.rule}: ${v.edge}`);
    expect(stdout).toContain(`${violations.length} dependency violations`);
    expect(code).not.toBe(0);
  }, 60_000);

  it('passes src as it is', async () => {
    const { code, stdout } = await depcruise(ROOT);
    expect(stdout).toContain('no dependency violations found');
    expect(code).toBe(0);
  }, 60_000);
});
