/**
 * Where the CPU of an embedded flow goes: N flows of one pattern at K in flight through
 * the embedded setup, for `node --cpu-prof` (see docs/performance.md).
 *
 *   node --cpu-prof --cpu-prof-dir=/tmp/prof --import tsx bench/profileEmbedded.ts [--pattern microtask|feedback-loop] [--total N] [--in-flight K] [--store lmdb|files]
 */
import { feedbackInput, flag, fmt, microtaskInput, percentile, pool } from './lib.js';
import { embeddedSetup, type Pattern } from './setups.js';

const pattern = (flag('pattern') ?? 'microtask') as Pattern;
const total = Number(flag('total') ?? 3000);
const inFlight = Number(flag('in-flight') ?? 64);
const setup = await embeddedSetup({ store: flag('store') === 'files' ? 'files' : 'lmdb' });
const input = pattern === 'microtask' ? microtaskInput : feedbackInput;
await pool(200, inFlight, () => setup.run(pattern, input));
const result = await pool(total, inFlight, () => setup.run(pattern, input));
console.log(`${pattern}: ${fmt(result.perSecond, 0)}/s, p50 ${fmt(percentile(result.latencies, 50))} ms, p99 ${fmt(percentile(result.latencies, 99))} ms, failed ${result.failed}`);
await setup.close();
process.exit(0);
