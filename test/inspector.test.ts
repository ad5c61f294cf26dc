import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { request as httpRequest } from 'node:http';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createWebSocketReceiver, type StatelyInspectionEvent } from '@statelyai/inspect';
import { chromium, type Browser } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { getStateNodes } from 'xstate/graph';
import { handWrittenAnswer } from '../examples/offline/answers.js';
import { ModelError } from '../src/actors/model/ModelError.js';
import { FlowHost } from '../src/flowHost.js';
import { provideFlows, type Flows } from '../src/flows.js';
import { startInspectorServer, type InspectorServer } from '../src/inspector/server.js';
import { describeMachine, layoutStatechart, machinesOf, type StatechartModel, type StatechartNode } from '../src/inspector/statechart.js';
import { startStatelyInspector } from '../src/inspector/stately.js';
import { FileJournal } from '../src/journal/FileJournal.js';
import type { JournalEntry } from '../src/journal/Journal.js';
import { silentLogger } from '../src/log.js';
import { FileSnapshotStore } from '../src/persistence/FileSnapshotStore.js';
import { scripted } from './support/flows.js';

const feedbackInput = JSON.parse(await readFile(new URL('../examples/feedback-loop.json', import.meta.url), 'utf8'));

/** The hand-written offline answers, each after `delay()` ms (so a flow can be watched while it runs). */
const slow = (delay: () => number) => (request: Parameters<typeof handWrittenAnswer>[0]) => {
  const answer = handWrittenAnswer(request);
  const delayMs = delay();
  return typeof answer === 'string' ? { text: answer, delayMs } : { ...(answer as { value: unknown }), delayMs };
};

/** A flow host as the embedded daemon has it: file snapshots, a file journal, a scripted model. */
async function setup(delayMs: number | (() => number)) {
  const dir = await mkdtemp(join(tmpdir(), 'inspector-'));
  const store = await FileSnapshotStore.open(join(dir, 'flows'));
  const journal = new FileJournal({ dir: join(dir, 'journal'), pollMs: 50 });
  let delay = delayMs;
  const runtime = scripted(slow(() => (typeof delay === 'number' ? delay : delay())));
  const flows = provideFlows({ microtask: runtime.microtask });
  const host = () => new FlowHost({ flows, store, journal, logger: silentLogger, outRoot: join(dir, 'out') });
  return { dir, store, journal, flows, host, setDelay: (ms: number) => void (delay = ms) };
}

/** Starts a feedback loop and stops its host after two saved steps (of four): a daemon shut down mid-flow. */
async function stopMidway(s: Awaited<ReturnType<typeof setup>>) {
  const first = s.host();
  const flowId = await first.start('feedback-loop', feedbackInput);
  while (((await s.store.load(flowId))!.record.steps ?? 0) < 2) await new Promise((r) => setTimeout(r, 10));
  await first.stop();
  expect((await s.store.load(flowId))!.record.status).toBe('running');
  return flowId;
}

async function getJson(url: string, headers: Record<string, string> = {}) {
  const response = await fetch(url, { headers });
  return { status: response.status, body: (await response.json()) as any };
}

/** Reads Server-Sent Events until `until` holds for the entries read (or the time runs out). */
async function readStream(url: string, until: (entries: Array<{ id: number; entry: JournalEntry }>) => boolean, headers: Record<string, string> = {}) {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), 15_000);
  const response = await fetch(url, { headers, signal: controller.signal });
  expect(response.headers.get('content-type')).toMatch(/^text\/event-stream/);
  const events: Array<{ id: number; entry: JournalEntry }> = [];
  const decoder = new TextDecoder();
  let buffer = '';
  try {
    for await (const chunk of response.body!) {
      buffer += decoder.decode(chunk as Uint8Array, { stream: true });
      let end: number;
      while ((end = buffer.indexOf('\n\n')) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const id = /^id: (\d+)$/m.exec(block)?.[1];
        const data = /^data: (.*)$/m.exec(block)?.[1];
        if (id !== undefined && data !== undefined) events.push({ id: Number(id), entry: JSON.parse(data) });
      }
      if (until(events)) break;
    }
  } finally {
    clearTimeout(timer);
    controller.abort();
  }
  return events;
}

const ended = (entries: Array<{ entry: JournalEntry }>) => entries.some(({ entry }) => entry.kind === 'flow' && entry.phase === 'ended');

describe('the statechart of a machine', () => {
  const flows: Flows = provideFlows({ microtask: scripted([]).microtask });

  it('has every state node of the definition, transitions with readable labels, and the child machines it invokes', async () => {
    const machines = machinesOf(flows);
    expect([...machines.keys()].sort()).toEqual(
      ['feedbackLoop', 'incremental', 'metacognitive', 'microtask', 'parallel', 'progressive', 'reentrant', 'toolBuilder'].sort(),
    );
    const model = describeMachine(flows.catalog.machineOf('feedback-loop'));
    const ids = (node: StatechartNode): string[] => [node.id, ...node.children.flatMap(ids)];
    expect(ids(model.root).sort()).toEqual(getStateNodes(flows.catalog.machineOf('feedback-loop').root).map((node) => node.id).concat('feedbackLoop').sort());
    const labels = model.edges.map((edge) => `${edge.source.split('.').pop()} -${edge.label}-> ${edge.target.split('.').pop()}`);
    expect(labels).toContain('generating -done: microtask [generated]-> generated');
    expect(labels).toContain('judged -always [passed]-> done');
    expect(labels).toContain('checking -error: check-> verifyGate');
    expect(model.root.children.find((node) => node.key === 'done')?.type).toBe('final');
    expect(model.root.children.find((node) => node.key === 'generating')?.invokes).toEqual([{ id: '0.feedbackLoop.generating', src: 'microtask' }]);

    // The tool builder composes the other patterns: its model says which machine each child runs.
    const toolBuilder = describeMachine(flows.catalog.machineOf('tool-builder'));
    expect(toolBuilder.actors.feedbackLoop).toEqual({ kind: 'machine', machineId: 'feedbackLoop' });
    expect(toolBuilder.actors.writeTool).toEqual({ kind: 'logic' });
  });

  it('is laid out without overlaps: every state inside its parent, siblings apart, every edge routed', async () => {
    for (const machine of machinesOf(flows).values()) {
      const laid: StatechartModel = await layoutStatechart(describeMachine(machine));
      expect(laid.width).toBeGreaterThan(0);
      const check = (node: StatechartNode) => {
        for (const child of node.children) {
          expect(child.width, child.id).toBeGreaterThan(0);
          if (node.path.length > 0) {
            expect(child.x).toBeGreaterThanOrEqual(node.x);
            expect(child.y).toBeGreaterThanOrEqual(node.y);
            expect(child.x + child.width).toBeLessThanOrEqual(node.x + node.width);
          }
          check(child);
        }
        for (const [i, a] of node.children.entries()) {
          for (const b of node.children.slice(i + 1)) {
            const apart = a.x + a.width <= b.x || b.x + b.width <= a.x || a.y + a.height <= b.y || b.y + b.height <= a.y;
            expect(apart, `${a.id} overlaps ${b.id}`).toBe(true);
          }
        }
      };
      check(laid.root);
      for (const edge of laid.edges) expect(edge.points.length, edge.id).toBeGreaterThanOrEqual(2);
    }
  });
});

describe('the inspector server (real HTTP)', () => {
  let s: Awaited<ReturnType<typeof setup>>;
  let server: InspectorServer;
  let flowId: string;

  beforeAll(async () => {
    s = await setup(20);
    server = await startInspectorServer({ journal: s.journal, store: s.store, flows: s.flows, logger: silentLogger, port: 0 });
    const host = s.host();
    flowId = await host.start('feedback-loop', feedbackInput);
    await host.finished(flowId);
    await s.journal.flush();
  });
  afterAll(async () => {
    await server?.close();
    await rm(s.dir, { recursive: true, force: true });
  });

  it('listens on 127.0.0.1 and serves the page and its assets, all from itself', async () => {
    expect(server.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/$/);
    const page = await fetch(server.url);
    expect(page.headers.get('content-type')).toMatch(/^text\/html/);
    expect(page.headers.get('content-security-policy')).toContain("default-src 'self'");
    const html = await page.text();
    // Offline: nothing is loaded from another origin.
    expect(html).not.toMatch(/(src|href)="(https?:)?\/\//);
    for (const asset of ['app.js', 'statechart.js', 'style.css']) {
      const response = await fetch(new URL(`/assets/${asset}`, server.url));
      expect(response.status, asset).toBe(200);
      expect(await response.text()).not.toMatch(/https?:\/\/(?!www\.w3\.org)/);
    }
    expect((await getJson(new URL('/assets/..%2Fserver.ts', server.url).href)).body.error.code).toBe('NOT_FOUND');
  });

  it('lists flows, and gives a flow its record and its journal', async () => {
    const list = await getJson(new URL('/api/flows', server.url).href);
    expect(list.status).toBe(200);
    expect(list.body.flows).toEqual([expect.objectContaining({ flowId, pattern: 'feedback-loop', status: 'done' })]);
    expect((await getJson(new URL('/api/flows?status=running', server.url).href)).body.flows).toEqual([]);
    expect((await getJson(new URL('/api/flows?limit=1', server.url).href)).body).toMatchObject({ total: 1, flows: [{ flowId }] });

    const flow = await getJson(new URL(`/api/flows/${flowId}`, server.url).href);
    expect(flow.status).toBe(200);
    expect(flow.body.record).toMatchObject({ flowId, machineId: 'feedbackLoop', status: 'done' });
    const entries = flow.body.entries as JournalEntry[];
    expect(entries[0]).toMatchObject({ kind: 'flow', phase: 'started' });
    expect(entries.at(-1)).toMatchObject({ kind: 'flow', phase: 'ended', status: 'done' });
    const steps = entries.filter((entry) => entry.kind === 'step');
    expect(steps.map((step) => step.step)).toEqual(steps.map((_, i) => i + 1));
    expect(steps.every((step) => typeof (step.snapshot as { value?: unknown }).value === 'string')).toBe(true);
    const finished = entries.filter((entry) => entry.kind === 'microtask' && entry.phase === 'finished');
    expect(finished.length).toBe(4);
  });

  it('serves a machine\'s laid-out statechart', async () => {
    const { status, body } = await getJson(new URL('/api/machines/feedbackLoop', server.url).href);
    expect(status).toBe(200);
    expect(body.machineId).toBe('feedbackLoop');
    expect(body.root.children.map((node: StatechartNode) => node.key)).toContain('verifying');
    expect((await getJson(new URL('/api/machines', server.url).href)).body.machines).toContain('toolBuilder');
  });

  it('answers mistakes with a status, a code and a message', async () => {
    const cases: Array<[string, number, string]> = [
      ['/api/flows/no-such-flow', 404, 'FLOW_NOT_FOUND'],
      ['/api/flows/a%2F..%2Fb', 400, 'INVALID_FLOW_ID'],
      ['/api/flows/a%2F..%2Fb/stream', 400, 'INVALID_FLOW_ID'],
      ['/api/flows?status=finished', 400, 'INVALID_QUERY'],
      ['/api/flows?limit=0', 400, 'INVALID_QUERY'],
      [`/api/flows/${flowId}/stream?since=-1`, 400, 'INVALID_QUERY'],
      ['/api/machines/nope', 404, 'MACHINE_NOT_FOUND'],
      ['/api/nothing', 404, 'NOT_FOUND'],
      ['/elsewhere', 404, 'NOT_FOUND'],
    ];
    for (const [path, status, code] of cases) {
      const response = await getJson(new URL(path, server.url).href);
      expect([path, response.status, response.body.error.code]).toEqual([path, status, code]);
      expect(response.body.error.message.length).toBeGreaterThan(10);
    }
    const post = await fetch(new URL('/api/flows', server.url), { method: 'POST', body: '{}' });
    expect(post.status).toBe(405);
    expect(((await post.json()) as any).error.code).toBe('METHOD_NOT_ALLOWED');
  });

  // Issue 11: names inherited by a plain object (`constructor`, `__proto__`) were taken for assets: 500 with the install path.
  it('answers 404 for any asset name that is not one of its files, naming no path on disk', async () => {
    const names = ['constructor', '__proto__', 'toString', 'hasOwnProperty', 'valueOf', '..%2f..', '..%2F..%2Fpackage.json', '%00', 'index.html%00'];
    for (const name of names) {
      // Raw HTTP, so the path reaches the server exactly as written (fetch would normalize it).
      const answer = await new Promise<{ status: number; body: string }>((resolve, reject) => {
        const url = new URL(server.url);
        const request = httpRequest({ host: url.hostname, port: url.port, path: `/assets/${name}` }, (response) => {
          let body = '';
          response.on('data', (chunk) => (body += chunk));
          response.on('end', () => resolve({ status: response.statusCode!, body }));
        });
        request.on('error', reject);
        request.end();
      });
      expect([name, answer.status], answer.body).toEqual([name, 404]);
      expect(JSON.parse(answer.body).error.code, name).toBe('NOT_FOUND');
      expect(answer.body, name).not.toMatch(/\/work\/|node_modules|src\/inspector|dist\/inspector|ENOENT|\bat /);
    }
    expect((await fetch(new URL('/assets/app.js', server.url))).status).toBe(200);
  });

  it('refuses a request addressed to another host name (DNS rebinding)', async () => {
    const answer = await new Promise<{ status: number; body: string }>((resolve, reject) => {
      const url = new URL('/api/flows', server.url);
      const request = httpRequest({ host: url.hostname, port: url.port, path: url.pathname, headers: { host: 'attacker.example:80' } }, (response) => {
        let body = '';
        response.on('data', (chunk) => (body += chunk));
        response.on('end', () => resolve({ status: response.statusCode!, body }));
      });
      request.on('error', reject);
      request.end();
    });
    expect(answer.status).toBe(403);
    expect(JSON.parse(answer.body).error.code).toBe('FORBIDDEN_HOST');
    expect((await getJson(new URL('/api/flows', server.url).href, {})).status).toBe(200);
  });

  it('streams the journal: stored entries, from `since` or after Last-Event-ID', async () => {
    const all = (await getJson(new URL(`/api/flows/${flowId}`, server.url).href)).body.entries as JournalEntry[];
    const streamed = await readStream(new URL(`/api/flows/${flowId}/stream`, server.url).href, ended);
    expect(streamed.map((e) => e.entry)).toEqual(all);
    expect(streamed.map((e) => e.id)).toEqual(all.map((_, i) => i));
    const since = await readStream(new URL(`/api/flows/${flowId}/stream?since=3`, server.url).href, ended);
    expect(since[0]!.id).toBe(3);
    const resumed = await readStream(new URL(`/api/flows/${flowId}/stream`, server.url).href, ended, { 'last-event-id': '4' });
    expect(resumed[0]!.id).toBe(5);
  });

  it('streams a running flow live, and a resumed one goes on with the same step numbers', async () => {
    const live = await setup(300);
    const liveServer = await startInspectorServer({ journal: live.journal, store: live.store, flows: live.flows, logger: silentLogger, port: 0 });
    try {
      // Caught mid-way: the host stops (as a daemon that is shut down), another resumes the flow.
      const id = await stopMidway(live);
      await live.journal.flush();
      const url = new URL(`/api/flows/${id}/stream`, liveServer.url).href;
      const early = await readStream(url, (entries) => entries.some((e) => e.entry.kind === 'step' && e.entry.step === 2));
      live.setDelay(30);
      const second = live.host();
      expect(await second.resume(id)).toBe('resumed');
      const streamed = await readStream(url, ended);
      expect(streamed.slice(0, early.length)).toEqual(early);
      const kinds = streamed.map(({ entry }) => (entry.kind === 'flow' ? `flow:${entry.phase}` : entry.kind));
      expect(kinds).toContain('flow:resumed');
      const stepNumbers = streamed.flatMap(({ entry }) => (entry.kind === 'step' ? [entry.step] : []));
      expect(stepNumbers).toEqual(stepNumbers.map((_, i) => i + 1));
      const flow = await getJson(new URL(`/api/flows/${id}`, liveServer.url).href);
      expect(flow.body.record.status).toBe('done');
    } finally {
      await liveServer.close();
      await rm(live.dir, { recursive: true, force: true });
    }
  });

  it('ends open streams on close, and says when its port is taken', async () => {
    const other = await startInspectorServer({ journal: s.journal, store: s.store, flows: s.flows, logger: silentLogger, port: 0 });
    const response = await fetch(new URL(`/api/flows/${flowId}/stream`, other.url));
    const reading = (async () => {
      for await (const _ of response.body!) void _;
    })();
    await other.close();
    await reading; // the stream ended: close did not hang on it

    const port = Number(new URL(server.url).port);
    await expect(startInspectorServer({ journal: s.journal, store: s.store, flows: s.flows, logger: silentLogger, port })).rejects.toMatchObject({
      code: 'INSPECTOR_PORT_IN_USE',
      message: expect.stringContaining('port is in use'),
    });
  });
});

describe("the bridge to Stately's inspector", () => {
  it("serves the page that embeds Stately's inspector and relays every inspection event of a flow host to it", async () => {
    const stately = await startStatelyInspector({ logger: silentLogger, port: 0 });
    const dir = await mkdtemp(join(tmpdir(), 'stately-'));
    try {
      expect(stately.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/$/);
      const page = await (await fetch(stately.url)).text();
      expect(page).toContain('<iframe id="inspector" src="https://stately.ai/inspect">');
      expect(page).toContain("new WebSocket('ws://' + location.host)");

      // What the browser page receives, over the same WebSocket.
      const received: StatelyInspectionEvent[] = [];
      const receiver = createWebSocketReceiver({ server: stately.url.replace(/^http/, 'ws') });
      receiver.subscribe((event) => received.push(event));
      // As `--inspect` wires it: the flow host hands every inspection event over.
      const store = await FileSnapshotStore.open(join(dir, 'flows'));
      const host = new FlowHost({
        flows: provideFlows({ microtask: scripted((request) => handWrittenAnswer(request)).microtask }),
        store,
        logger: silentLogger,
        outRoot: dir,
        inspect: stately.inspect,
      });
      const flowId = await host.start('feedback-loop', feedbackInput);
      await host.finished(flowId);
      const deadline = Date.now() + 10_000;
      const rootDone = () =>
        received.find((e) => e.type === '@xstate.snapshot' && (e.snapshot as { status?: string }).status === 'done' && (e.snapshot as { machine?: unknown; value?: unknown }).value === 'done');
      while (!rootDone() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
      expect(rootDone()).toBeDefined();
      const root = received.find((e) => e.type === '@xstate.actor' && e.parentId === undefined);
      expect(root).toMatchObject({ type: '@xstate.actor', definition: expect.stringContaining('"id":"feedbackLoop"') });
      // The microtasks show as child actors of the flow.
      expect(received.filter((e) => e.type === '@xstate.actor' && e.parentId !== undefined).length).toBeGreaterThanOrEqual(4);
    } finally {
      stately.stop();
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('refuses a port in use with a clear error, and its stop lets go of connected pages', async () => {
    const stately = await startStatelyInspector({ logger: silentLogger, port: 0 });
    const port = Number(new URL(stately.url).port);
    await expect(startStatelyInspector({ logger: silentLogger, port })).rejects.toMatchObject({ code: 'STATELY_PORT_IN_USE' });
    // A page left open: stop closes its connection rather than waiting for it.
    // (Node 20 has no WebSocket of its own: the `ws` that @statelyai/inspect brings.)
    const require = createRequire(import.meta.url);
    const { WebSocket } = createRequire(require.resolve('@statelyai/inspect/server'))('ws') as {
      WebSocket: new (url: string) => { on(event: 'open' | 'close', listener: (code?: number) => void): void };
    };
    const closed = new Promise<number>((resolve) => {
      const page = new WebSocket(stately.url.replace(/^http/, 'ws'));
      page.on('open', () => stately.stop());
      page.on('close', (code) => resolve(code ?? 0));
    });
    expect(await closed).toBeGreaterThan(0);
    const again = await startStatelyInspector({ logger: silentLogger, port });
    again.stop();
  });
});

describe('the inspector page in a real browser (headless Chromium)', () => {
  const executablePath = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
  let browser: Browser;

  beforeAll(async () => {
    if (!existsSync(executablePath)) {
      throw new Error(`no Chromium at ${executablePath}: install it: apt-get install -y chromium (or set CHROMIUM_PATH)`);
    }
    browser = await chromium.launch({
      executablePath,
      args: ['--headless=new', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
  });
  afterAll(async () => {
    await browser?.close();
  });

  /** A page that fails the test on a script error or any request leaving the inspector (offline). */
  async function openPage(server: InspectorServer) {
    const page = await browser.newPage({ viewport: { width: 1500, height: 900 } });
    const problems: string[] = [];
    page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
    page.on('console', (m) => m.type() === 'error' && problems.push(`console: ${m.text()}`));
    const origin = new URL(server.url).origin;
    await page.route('**/*', (route) => (route.request().url().startsWith(origin) ? route.continue() : (problems.push(`left the inspector: ${route.request().url()}`), route.abort())));
    return { page, problems };
  }

  it('shows a running flow, its state changing live, steps back in time, and is screenshotted', async () => {
    // The first call outlasts the page's load (slow on a loaded machine), so the page sees the
    // first state; each later state stays long enough for a 50 ms poll to see it.
    let calls = 0;
    const s = await setup(() => (++calls === 1 ? 3_000 : 800));
    const server = await startInspectorServer({ journal: s.journal, store: s.store, flows: s.flows, logger: silentLogger, port: 0 });
    try {
      const { page, problems } = await openPage(server);
      const host = s.host();
      const flowId = await host.start('feedback-loop', feedbackInput);
      await page.goto(server.url);
      await page.locator(`#flow-list li[data-flow-id="${flowId}"]`).click();
      await page.locator('#chart svg[data-machine="feedbackLoop"]').waitFor();
      const currentState = page.locator('#current-state');
      await expect.poll(() => currentState.textContent(), { timeout: 10_000 }).toMatch(/^(generating|verifying)/);
      const seen = new Set<string>([(await currentState.textContent())!]);
      // Live: the highlighted state follows the flow with no reload.
      while (!(await page.locator('#flow-status').textContent())?.includes('done')) {
        seen.add((await currentState.textContent())!);
        await page.waitForTimeout(50);
      }
      seen.add((await currentState.textContent())!);
      expect(seen.size).toBeGreaterThanOrEqual(3);
      expect(seen).toContain('done (final state)');
      await expect.poll(() => page.locator('#chart g.state.active').getAttribute('data-state-path')).toBe('done');
      expect(await page.locator('#live').getAttribute('class')).toContain('on');

      // Time travel: one step back shows the state before the last transition, highlighted.
      const steps = (await s.journal.read(flowId)).filter((entry) => entry.kind === 'step');
      const before = steps.at(-2)!;
      await page.locator('#step-back').click();
      await expect.poll(() => currentState.textContent()).toBe(before.rootState);
      expect(await page.locator('#position-label').textContent()).toContain(`step ${before.step} of ${steps.at(-1)!.step}`);
      expect(await page.locator('#chart g.state.active').getAttribute('data-state-path')).toBe(before.rootState);
      expect(await page.locator('#live').getAttribute('class')).not.toContain('on');
      await page.locator('#step-forward').click();
      await expect.poll(() => currentState.textContent()).toBe('done (final state)');
      await page.locator('#step-back').click();

      // The microtask log: prompt, answer, tokens, duration.
      await page.locator('.tabs button[data-tab="microtasks"]').click();
      const first = page.locator('#tab-microtasks details').first();
      await first.locator('summary').click();
      await expect.poll(() => first.textContent()).toContain('Write the subject line for this change.');
      expect(await first.textContent()).toMatch(/\d+→\d+ tok · \d+ ms/);

      const screenshot = process.env.INSPECTOR_SCREENSHOT ?? join(tmpdir(), 'microtask-inspector-test.png');
      await mkdir(join(screenshot, '..'), { recursive: true });
      await page.screenshot({ path: screenshot });
      expect((await stat(screenshot)).size).toBeGreaterThan(20_000);
      expect(problems).toEqual([]);
    } finally {
      await server.close();
      await rm(s.dir, { recursive: true, force: true });
    }
  }, 60_000);

  it('opens finished and resumed flows, and the child flows of a tool build at any step', async () => {
    const s = await setup(10);
    const server = await startInspectorServer({ journal: s.journal, store: s.store, flows: s.flows, logger: silentLogger, port: 0 });
    try {
      const host = s.host();
      const toolSpec = JSON.parse(await readFile(new URL('../examples/tool-builder.json', import.meta.url), 'utf8'));
      const toolFlow = await host.start('tool-builder', toolSpec);
      await host.finished(toolFlow);
      // A flow stopped mid-way (a daemon shut down) and resumed by another host.
      s.setDelay(300);
      const resumedFlow = await stopMidway(s);
      s.setDelay(10);
      const second = s.host();
      expect(await second.resume(resumedFlow)).toBe('resumed');
      await second.finished(resumedFlow);
      await s.journal.flush();

      const { page, problems } = await openPage(server);
      await page.goto(`${server.url}#flow=${toolFlow}`);
      await page.locator('#chart svg[data-machine="toolBuilder"]').waitFor();
      await expect.poll(() => page.locator('#current-state').textContent()).toBe('done (final state)');

      // Back to a step where a module's feedback loop ran, then into that child flow.
      const steps = (await s.journal.read(toolFlow)).filter((entry) => entry.kind === 'step');
      const childOf = (step: (typeof steps)[number]) =>
        Object.entries((step.snapshot as { children?: Record<string, { src: string; snapshot: { value?: unknown } }> }).children ?? {}).find(([, child]) => child.src === 'feedbackLoop');
      const during = steps.find((step) => childOf(step) !== undefined)!;
      const [childId, child] = childOf(during)!;
      await page.locator(`#tab-events li[data-step="${during.step}"]`).first().click();
      await expect.poll(() => page.locator('#position-label').textContent()).toContain(`step ${during.step} of`);
      await page.locator(`#children .chip.machine[data-child-id="${childId}"]`).click();
      await page.locator('#chart svg[data-machine="feedbackLoop"]').waitFor();
      // Issue 16: the child is named after its module (`module:auth` reads `module auth`).
      expect(childId).toMatch(/^module:\w+$/);
      expect(await page.locator('#breadcrumb').textContent()).toContain(`${childId.replace(':', ' ')} (feedbackLoop)`);
      await expect.poll(() => page.locator('#current-state').textContent()).toBe(String(child.snapshot.value));
      expect(await page.locator('#chart g.state.active').getAttribute('data-state-path')).toBe(String(child.snapshot.value));
      // At the end the child is gone: its chart stays, nothing is highlighted.
      await page.locator('#live').click();
      await expect.poll(() => page.locator('#chart .notice').textContent()).toContain('not running at this step');
      expect(await page.locator('#chart g.state.active').count()).toBe(0);
      await page.locator('#breadcrumb a').first().click();
      await page.locator('#chart svg[data-machine="toolBuilder"]').waitFor();

      // The resumed flow: one journal, its resume in the event log, steps numbered on.
      // As `microtask inspect <flowId>` links to it.
      await page.goto(`${server.url}#/flows/${resumedFlow}`);
      await page.locator('#chart svg[data-machine="feedbackLoop"]').waitFor();
      await expect.poll(() => page.locator('#tab-events').textContent()).toContain('flow resumed');
      const resumedSteps = (await s.journal.read(resumedFlow)).filter((entry) => entry.kind === 'step');
      // Every saved step can be travelled to from the log (a transition row names the step that saved it).
      const listed = await page.locator('#tab-events li[data-step]').evaluateAll((items) => [...new Set(items.map((li) => Number((li as unknown as { dataset: { step: string } }).dataset.step)))]);
      expect(listed).toEqual(resumedSteps.map((step) => step.step));
      expect(await page.locator('#position-label').textContent()).toContain(`step ${resumedSteps.at(-1)!.step} of ${resumedSteps.at(-1)!.step}`);
      expect(problems).toEqual([]);
    } finally {
      await server.close();
      await rm(s.dir, { recursive: true, force: true });
    }
  }, 60_000);

  // Issue 16: all three modules' calls were listed under one child id
  // (`0.toolBuilder.generatingModule`), and the log named actors by XState's ids.
  it("a tool build's child view of one module lists that module's microtasks only, by the names a person knows", async () => {
    const s = await setup(10);
    const server = await startInspectorServer({ journal: s.journal, store: s.store, flows: s.flows, logger: silentLogger, port: 0 });
    try {
      const host = s.host();
      const toolInput = JSON.parse(await readFile(new URL('../examples/tool-builder.json', import.meta.url), 'utf8'));
      const flowId = await host.start('tool-builder', toolInput);
      await host.finished(flowId);
      await s.journal.flush();
      const names = (toolInput.spec.modules as Array<{ name: string }>).map((m) => m.name);
      const entries = await s.journal.read(flowId);

      const { page, problems } = await openPage(server);
      await page.goto(`${server.url}#flow=${flowId}`);
      await page.locator('#chart svg[data-machine="toolBuilder"]').waitFor();
      // The event log names each module's loop, not an id XState made up.
      await expect.poll(() => page.locator('#tab-events').textContent()).toContain('module auth (feedbackLoop)');
      const logActors = await page.locator('#tab-events .actor').allTextContents();
      for (const name of names) expect(logActors).toContain(`module ${name} (feedbackLoop)`);
      expect(logActors.filter((text) => text.includes('0.toolBuilder'))).toEqual([]);
      // The chart says what the module states spawn.
      expect(await page.locator('g.state[data-state-path="generatingModule"] .invoke').textContent()).toBe('spawn feedbackLoop');
      // The step the first module's loop ended: its transition (`xstate.done.actor.*`) is the one drawn as taken.
      const loopDone = entries.find((e) => e.kind === 'step' && e.actor === 'root' && e.event === `xstate.done.actor.module:${names[0]}`) as { step: number } | undefined;
      expect(loopDone).toBeDefined();
      await page.locator(`#tab-events li[data-step="${loopDone!.step}"]`).first().click();
      await expect.poll(() => page.locator('#step-event').textContent()).toBe(`step ${loopDone!.step}: toolBuilder done: module ${names[0]}`);
      await expect
        .poll(() => page.locator('#chart g.edge.taken').evaluateAll((items) => items.map((g) => `${g.getAttribute('data-event')} → ${g.getAttribute('data-target')}`)))
        .toContain('xstate.done.actor.* → toolBuilder.moduleDone');
      await page.locator('#live').click();

      await page.locator('.tabs button[data-tab="microtasks"]').click();
      for (const name of names) {
        await page.goto(`${server.url}#flow=${flowId}&actor=module:${name}`);
        await page.locator('#chart svg[data-machine="feedbackLoop"]').waitFor();
        const mine = entries.filter((e) => e.kind === 'microtask' && e.phase === 'started' && e.key.includes(`/module/${name}/`)).map((e) => (e as { key: string }).key);
        expect(mine.length).toBeGreaterThanOrEqual(2);
        const rows = page.locator('#tab-microtasks details');
        await expect.poll(() => rows.evaluateAll((items) => items.map((item) => (item as unknown as { dataset: { key: string } }).dataset.key))).toEqual(mine);
        expect(await page.locator('#tab-microtasks p.muted').textContent()).toMatch(new RegExp(`^${mine.length} microtasks of module ${name} `));
        expect(new Set(await page.locator('#tab-microtasks summary .actor').allTextContents())).toEqual(
          new Set([`module ${name} › generating`, `module ${name} › verifying`]),
        );
        expect(await page.locator('#breadcrumb').textContent()).toContain(`module ${name} (feedbackLoop)`);
      }
      expect(problems).toEqual([]);
    } finally {
      await server.close();
      await rm(s.dir, { recursive: true, force: true });
    }
  }, 60_000);

  // Issue 16: travelling back, the microtasks still to come were tagged RUNNING.
  it('in time travel, a microtask that starts later is not tagged running', async () => {
    const s = await setup(300);
    const server = await startInspectorServer({ journal: s.journal, store: s.store, flows: s.flows, logger: silentLogger, port: 0 });
    try {
      const host = s.host();
      const flowId = await host.start('feedback-loop', feedbackInput);
      await host.finished(flowId);
      await s.journal.flush();
      const entries = await s.journal.read(flowId);
      const first = entries.find((entry) => entry.kind === 'step')!;
      const later = entries.filter((entry) => entry.kind === 'microtask' && entry.phase === 'started' && Date.parse(entry.at) > Date.parse(first.at));
      expect(later.length, 'the verdict is asked for after the first step').toBeGreaterThan(0);

      const { page, problems } = await openPage(server);
      await page.goto(`${server.url}#flow=${flowId}`);
      await page.locator('#chart svg[data-machine="feedbackLoop"]').waitFor();
      await page.locator('.tabs button[data-tab="microtasks"]').click();
      await page.locator('#step-first').click();
      await expect.poll(() => page.locator('#position-label').textContent()).toContain(`step ${first.step} of`);
      const future = page.locator('#tab-microtasks details.future');
      await expect.poll(() => future.count()).toBe(later.length);
      for (const row of await future.all()) {
        expect(await row.locator('.tag.running').count()).toBe(0);
        expect(await row.locator('.tag').allTextContents()).toEqual(['not started']);
      }
      expect(problems).toEqual([]);
    } finally {
      await server.close();
      await rm(s.dir, { recursive: true, force: true });
    }
  }, 60_000);

  // Issue 16: a flow ended in its `failed` state read "State: failed (done)".
  it('shows the final state of a failed flow as final, not "(done)"', async () => {
    const s = await setup(10);
    const failing = scripted(() => new ModelError('invalid_output', 'the answer does not match the schema'));
    const host = new FlowHost({ flows: provideFlows({ microtask: failing.microtask }), store: s.store, journal: s.journal, logger: silentLogger, outRoot: join(s.dir, 'out') });
    const server = await startInspectorServer({ journal: s.journal, store: s.store, flows: s.flows, logger: silentLogger, port: 0 });
    try {
      const flowId = await host.start('feedback-loop', feedbackInput);
      await host.finished(flowId);
      await s.journal.flush();
      expect((await s.store.load(flowId))!.record).toMatchObject({ status: 'failed', state: 'failed' });

      const { page, problems } = await openPage(server);
      await page.goto(`${server.url}#flow=${flowId}`);
      await page.locator('#chart svg[data-machine="feedbackLoop"]').waitFor();
      await expect.poll(() => page.locator('#flow-status').textContent()).toBe('failed');
      await expect.poll(() => page.locator('#current-state').textContent()).toBe('failed (final state)');
      expect(problems).toEqual([]);
    } finally {
      await server.close();
      await rm(s.dir, { recursive: true, force: true });
    }
  }, 60_000);
});
