/**
 * The event loop while the tool builder checks generated code: N whole-tool checks
 * (type-check of every module and the entry, then `--help`) and N module checks at once,
 * as a daemon runs them for N concurrent tool builds. Reports the event-loop delay
 * (perf_hooks.monitorEventLoopDelay), the wall time and the peak RSS of this process
 * (worker threads included).
 *
 *   npx tsx bench/toolCheckEventLoop.ts [N=20] [DIST_DIR]
 *
 * With DIST_DIR (dist after `npm run build`, or an older build to compare with) the checks
 * are the compiled ones, as a daemon runs them; without, the sources (under tsx, where
 * loading the compiler goes through tsx's loader and is slower).
 */
import { readFile } from 'node:fs/promises';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { renderToolFiles } from '../src/toolFiles.js';
import type { ToolSpec } from '../src/contracts/toolSpec.js';

const n = Number(process.argv[2] ?? 20);
const from = process.argv[3] ? pathToFileURL(resolve(process.argv[3], 'actors/toolCheck.js')).href : '../src/actors/toolCheck.js';
const toolCheck = (await import(from)) as typeof import('../src/actors/toolCheck.js');
const spec: ToolSpec = JSON.parse(await readFile(new URL('../examples/api-tester.json', import.meta.url), 'utf8'));
const read = (file: string) => readFile(new URL(`../examples/offline/api-tester/${file}`, import.meta.url), 'utf8');
const modules = Object.fromEntries(await Promise.all(spec.modules.map(async (m) => [m.name, await read(`${m.name}.js`)] as const)));
const entry = { entry: await read('cli.js'), readme: await read('README.md') };

// Each build's code differs (a comment), as concurrent builds' code does.
const variant = (i: number) => renderToolFiles(spec, Object.fromEntries(Object.entries(modules).map(([k, v]) => [k, `${v}// build ${i}\n`])), entry);

const histogram = monitorEventLoopDelay({ resolution: 5 });
histogram.enable();
const started = performance.now();
const results = await Promise.all(
  Array.from({ length: n }, async (_, i) => {
    const moduleCheck = await toolCheck.checkModule(spec, 'auth', `${modules.auth}// build ${i}\n`);
    const toolResult = await toolCheck.checkTool(spec, variant(i));
    return moduleCheck.ok && toolResult.ok ? 'ok' : JSON.stringify([moduleCheck, toolResult]).slice(0, 300);
  }),
);
const wallMs = performance.now() - started;
histogram.disable();
const failed = results.filter((r) => r !== 'ok');
const ms = (ns: number) => (ns / 1e6).toFixed(1);
console.log(
  JSON.stringify({
    checks: n,
    failed: failed.length,
    ...(failed.length ? { firstFailure: failed[0] } : {}),
    wallMs: Math.round(wallMs),
    eventLoopDelayMs: { p50: ms(histogram.percentile(50)), p99: ms(histogram.percentile(99)), max: ms(histogram.max) },
    peakRssMB: Math.round(process.resourceUsage().maxRSS / 1024),
  }),
);
// An older build has no pool to close.
await (toolCheck as { closeToolChecks?: () => Promise<void> }).closeToolChecks?.();
