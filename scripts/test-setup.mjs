#!/usr/bin/env node
// `npm test`'s set-up (the `pretest` script): the tests need three programs that npm does
// not install. Each is looked for where the tests look for it; what is missing is installed
// with apt-get when this runs as root on a machine that has it, and otherwise the run stops
// with one line naming the command that installs it. Silent when everything is there.
//
// MICROTASK_SETUP_ROOT prefixes the fixed directories searched (not PATH): for this
// script's own test, which cannot uninstall the machine's packages.
import { spawnSync } from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import { delimiter, join } from 'node:path';

const env = process.env;
const root = env.MICROTASK_SETUP_ROOT ?? '';
const pathDirs = (env.PATH ?? '').split(delimiter).filter(Boolean);

const isExecutable = (path) => {
  try {
    accessSync(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
};
const findIn = (dirs, name) => dirs.map((dir) => join(dir, name)).find(isExecutable);
const fixed = (...dirs) => dirs.map((dir) => root + dir);

const requirements = [
  {
    // src/testing/natsServer.ts's findNatsServer: NATS_SERVER_BIN, then PATH, then these.
    what: 'nats-server',
    debianPackage: 'nats-server',
    override: 'NATS_SERVER_BIN',
    find: () => findIn([...pathDirs, ...fixed('/usr/sbin', '/usr/local/bin', '/opt/homebrew/bin')], 'nats-server'),
  },
  {
    // test/inspector.test.ts drives headless Chromium here (playwright-core brings no browser).
    what: 'chromium',
    debianPackage: 'chromium',
    override: 'CHROMIUM_PATH',
    find: () => findIn(fixed('/usr/bin'), 'chromium'),
  },
  {
    // test/sandbox.test.ts runs generated code in bubblewrap (src/actors/sandbox.ts).
    what: 'bwrap',
    debianPackage: 'bubblewrap',
    find: () => findIn(fixed('/usr/bin', '/bin', '/usr/local/bin'), 'bwrap'),
  },
];

const fail = (line) => {
  process.stderr.write(`test setup: ${line}\n`);
  process.exit(1);
};

// A path set by hand that is wrong cannot be mended by installing a package: the tests would still use it.
for (const { override } of requirements) {
  const path = override && env[override];
  if (path && !isExecutable(path)) fail(`${override}=${path} is not an executable file: unset it, or point it at the program`);
}

const missing = () => requirements.filter(({ override, find }) => !(override && env[override]) && !find());
const wanted = missing();
if (wanted.length === 0) process.exit(0);

const packages = wanted.map((r) => r.debianPackage);
const names = wanted.map((r) => r.what).join(', ');
const installCommand = `apt-get install -y ${packages.join(' ')}`;
const aptGet = findIn(pathDirs, 'apt-get');
if (!aptGet) {
  const overrides = wanted.filter((r) => r.override).map((r) => r.override);
  const orSet = overrides.length ? `, or set ${overrides.join(' / ')}` : '';
  fail(`missing ${names}: install the packages ${packages.join(' ')} with your system's package manager${orSet}`);
}
if (process.getuid?.() !== 0) fail(`missing ${names}: run \`sudo ${installCommand}\`, then npm test again`);

process.stderr.write(`test setup: installing ${packages.join(' ')} with apt-get (missing ${names})\n`);
const aptEnv = { ...env, DEBIAN_FRONTEND: 'noninteractive' };
for (const args of [['update', '-qq'], ['install', '-y', '-qq', ...packages]]) {
  const run = spawnSync(aptGet, args, { env: aptEnv, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  if (run.status !== 0) {
    // apt's own words say why (no network, a held package): they are the useful part here.
    process.stderr.write(`${run.stdout ?? ''}${run.stderr ?? ''}${run.error ? `${run.error.message}\n` : ''}`);
    fail(`\`apt-get ${args.join(' ')}\` failed (above): run \`apt-get update && ${installCommand}\` by hand`);
  }
}
const still = missing();
if (still.length) fail(`apt-get installed ${packages.join(' ')} but ${still.map((r) => r.what).join(', ')} is still not found`);
