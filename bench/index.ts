/**
 * `npm run bench`: the cost of orchestration, side by side with the alternatives and at
 * scale, printed as markdown tables (progress goes to stderr).
 *
 *   npm run bench                      all four parts, medians of 3 runs (about 5 minutes)
 *   npm run bench -- --quick           smaller counts, 1 run (about 1.5 minutes)
 *   npm run bench -- --only 1,3        some parts: 1 overhead, 2 LangGraph, 3 scale, 4 persistence, 5 idle wait (NATS),
 *                                      6 flows waiting for a person (NATS with leases, and lmdb)
 *   npm run bench -- --runs 5 --no-sdk
 *
 * Each part also runs alone: npx tsx bench/overhead.ts | langgraph.ts | scale.ts | persistence.ts | idleWait.ts | waitingFlows.ts
 */
import { cpus, totalmem } from 'node:os';
import { args, flag, quick, runs } from './lib.js';
import { runIdleWait } from './idleWait.js';
import { runWaitingFlows } from './waitingFlows.js';
import { runLangGraph } from './langgraph.js';
import { runOverhead } from './overhead.js';
import { runPersistence } from './persistence.js';
import { runScale } from './scale.js';
import { stepProblems } from './steps.js';

const only = new Set((flag('only') ?? '1,2,3,4,5,6').split(',').map((s) => s.trim()));
const began = performance.now();
const out = (text: string) => console.log(text);

out(`# Microtask Orchestrator benchmarks${quick ? ' (--quick)' : ''}\n`);
out(
  `Machine: ${cpus().length} × ${cpus()[0]?.model ?? '?'}, ${Math.round(totalmem() / 2 ** 30)} GB, Node ${process.version}, ${process.platform}. ` +
    `Instant model unless said. Every figure is the median of ${runs} run(s), setups interleaved round-robin in one process, ` +
    'so compare them as ratios within this run: the machine may be shared.',
);

if (only.has('1')) {
  const { markdown } = await runOverhead({ sdk: !args.includes('--no-sdk') });
  out(`\n## 1. Overhead per microtask (flows of one microtask; sequential, and 64 in flight)\n\n${markdown}`);
  out(
    '\n"floor ÷ setup" is how many times the floor\'s rate is the setup\'s; the overhead is the added latency (sequential) ' +
      'or the added time per microtask at that rate (64 in flight). In NATS mode the daemon and client share this process; the worker and nats-server have their own.',
  );
}
if (only.has('2')) {
  const { markdown } = await runLangGraph();
  out(`\n## 2. The feedback loop (generate → verify → revise, 3 rounds, 6 model calls), 16 flows in flight, vs LangGraph.js\n\n${markdown}`);
}
if (only.has('3')) {
  const { markdown } = await runScale();
  out(`\n## 3. Scale: feedback-loop flows waiting on a 10-minute model call, in one daemon process; SIGKILL; resume\n\n${markdown}`);
}
if (only.has('4')) {
  const { markdown } = await runPersistence();
  out(`\n## 4. Persistence per transition, by snapshot size\n\n${markdown}`);
  out(
    '\nIn situ, the steps a flow takes while its previous save is being written join its next save (one write, one fsync): ' +
      '"saves per flow" counts writes, not steps. lmdb keeps every step in the save; NATS KV keeps the last snapshot, and the ' +
      'daemon puts the steps in the journal stream with the save (parts 1 and 2 check every step is stored).',
  );
}
if (only.has('5')) {
  const { markdown } = await runIdleWait();
  out(`\n## 5. Waiting over NATS: microtasks waiting on a worker that does not answer (no lease renewals: part 3 has those)\n\n${markdown}`);
  out('\nThe first row is the floor: the same process and connection with nothing waiting; CPU below it is noise.');
}
if (only.has('6')) {
  const { markdown } = await runWaitingFlows();
  out(`\n## 6. Flows waiting for a person in one daemon process: what they cost while they wait; SIGKILL; resume\n\n${markdown}`);
  out(
    '\nOver NATS the daemon holds its flows by one heartbeat per daemon (every third of MICROTASK_LEASE_MS) and an ownership index, ' +
      'not a lease renewal per flow; `--before DIR` runs the same in another checkout (built) for a ratio.',
  );
}
out(`\nTotal: ${((performance.now() - began) / 1000).toFixed(0)} s.`);
// A figure for flows that did not store every transition is no figure: fail the run.
if (stepProblems.length) {
  process.stderr.write(`bench: steps missing in ${stepProblems.length} setup(s): ${stepProblems.join('; ')}\n`);
  process.exit(1);
}
process.exit(0);
