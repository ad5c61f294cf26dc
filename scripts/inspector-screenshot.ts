/**
 * Takes docs/inspector.png: a real tool-builder flow (the offline hand-written answers,
 * each after 600 ms, so it can be caught mid-way) run by a FlowHost with file snapshots
 * and a file journal, its inspector page opened in headless Chromium while it runs, the
 * module's feedback loop (a child flow) on show with its microtask log.
 *
 *   npx tsx scripts/inspector-screenshot.ts [out.png]
 *
 * Needs Chromium (apt-get install -y chromium, or CHROMIUM_PATH).
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import { handWrittenAnswer } from '../examples/offline/answers.js';
import { CircuitBreaker } from '../src/actors/CircuitBreaker.js';
import { createMicrotaskLogic, MicrotaskRunner } from '../src/actors/microtask.js';
import { ScriptedModel } from '../src/actors/model/ScriptedModel.js';
import { MemoryResultsStore } from '../src/actors/ResultsStore.js';
import { FlowHost } from '../src/flowHost.js';
import { provideFlows } from '../src/flows.js';
import { startInspectorServer } from '../src/inspector/server.js';
import { FileJournal } from '../src/journal/FileJournal.js';
import { answerSchemas } from '../src/contracts/answers.js';
import { silentLogger } from '../src/log.js';
import { FileSnapshotStore } from '../src/persistence/FileSnapshotStore.js';

const out = process.argv[2] ?? 'docs/inspector.png';
const executablePath = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const delayMs = 600;

const dir = await mkdtemp(join(tmpdir(), 'inspector-shot-'));
const store = await FileSnapshotStore.open(join(dir, 'flows'));
const journal = new FileJournal({ dir: join(dir, 'journal'), pollMs: 50 });
const model = new ScriptedModel((request) => {
  const answer = handWrittenAnswer(request);
  return typeof answer === 'string' ? { text: answer, delayMs } : { ...(answer as { value: unknown }), delayMs };
});
const runner = new MicrotaskRunner({ model, results: new MemoryResultsStore(), answers: answerSchemas, breaker: new CircuitBreaker(0) });
const flows = provideFlows({ microtask: createMicrotaskLogic(runner) });
const host = new FlowHost({ flows, store, journal, logger: silentLogger, outRoot: join(dir, 'tools') });
const server = await startInspectorServer({ journal, store, flows, logger: silentLogger, port: 0 });
const browser = await chromium.launch({
  executablePath,
  args: ['--headless=new', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
try {
  // A finished flow in the list too.
  const done = await host.start('feedback-loop', JSON.parse(await readFile('examples/feedback-loop.json', 'utf8')));
  await host.finished(done);
  const flowId = await host.start('tool-builder', JSON.parse(await readFile('examples/tool-builder.json', 'utf8')));
  const page = await browser.newPage({ viewport: { width: 1500, height: 900 } });
  await page.goto(`${server.url}#flow=${flowId}`);
  await page.locator('#chart svg[data-machine="toolBuilder"]').waitFor();
  // Into the module's feedback loop once it runs, while its verifier is at work.
  const child = page.locator('#children .chip.machine', { hasText: 'feedbackLoop' });
  await child.waitFor({ timeout: 30_000 });
  await child.click();
  await page.locator('#chart svg[data-machine="feedbackLoop"]').waitFor();
  await page.waitForFunction(() => document.getElementById('current-state')?.textContent === 'verifying', undefined, { timeout: 30_000 });
  await page.locator('.tabs button[data-tab="microtasks"]').click();
  await page.locator('#tab-microtasks details:not(.future)').last().locator('summary').click();
  await page.waitForTimeout(300);
  await page.screenshot({ path: out });
  console.log(`wrote ${out} (flow ${flowId})`);
} finally {
  await browser.close();
  await host.stop();
  await server.close();
  await rm(dir, { recursive: true, force: true });
}
