import { Option, type Command } from 'commander';
import { devCommand, type DevOptions } from '../dev.js';
import { flowsOption } from '../flowsOption.js';
import { port } from '../optionParsers.js';

/** `microtask dev`: the whole local stack in one process tree (src/cli/dev.ts runs it). */
export function addDevCommand(program: Command, setExit: (code: number) => void) {
  program
    .command('dev')
    .description('the whole local stack: a nats-server, the daemon, a worker and the inspector; Ctrl-C stops them')
    .addOption(new Option('--nats-port <n>', 'nats-server listens on this port of 127.0.0.1 (default: a free one)').argParser(port))
    .addOption(flowsOption())
    .addOption(new Option('--inspector-port <n>', 'serve the inspector page on this port (default MICROTASK_INSPECTOR_PORT, 7420; 0 = any free)').argParser(port))
    .addHelpText(
      'after',
      `
nats-server comes from NATS_SERVER_BIN, PATH or /usr/sbin (\`apt-get install nats-server\`, or a release from
https://github.com/nats-io/nats-server/releases); its JetStream store is $MICROTASK_STATE_DIR/nats, so flows
outlive a restart. Clients connect to the NATS URL it prints, e.g. NATS_URL=<it> microtask build <spec.json>.`,
    )
    .action(async (options: DevOptions) => {
      setExit(await devCommand(options));
    });
}
