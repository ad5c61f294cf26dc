import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { request as httpRequest } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium, type Browser } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { handWrittenAnswer } from '../examples/offline/answers.js';
import { MemoryBus } from './support/MemoryBus.js';
import { Daemon } from '../src/daemon/Daemon.js';
import { provideFlows } from '../src/flows.js';
import { LmdbInbox } from '../src/inbox/LmdbInbox.js';
import { startInspectorServer, type InspectorServer, type InspectorServerOptions } from '../src/inspector/server.js';
import { FileJournal } from '../src/journal/FileJournal.js';
import { silentLogger } from '../src/log.js';
import type { FeedbackLoopOutput } from '../src/machines/feedbackLoop.js';
import type { ReentrantOutput } from '../src/machines/reentrant.js';
import { LmdbSnapshotStore } from '../src/persistence/LmdbSnapshotStore.js';
import { LmdbStore } from '../src/persistence/LmdbStore.js';
import { runCli, startCli, until } from './support/cliProcess.js';
import { scripted } from './support/flows.js';

/**
 * Issue 14, item 4: the inspector shows what a waiting flow waits for and lets a person
 * answer it; a page that can change things refuses cross-site writes, and asks for a
 * token when it listens beyond loopback.
 */

const reentrant = JSON.parse(await readFile(new URL('../examples/reentrant.json', import.meta.url), 'utf8')) as Record<string, unknown>;
const { review: _review, ...withoutReview } = reentrant;
const personReview = { ...withoutReview, personReview: {} };
const feedbackLoop = JSON.parse(await readFile(new URL('../examples/feedback-loop.json', import.meta.url), 'utf8')) as Record<string, unknown>;
const { verify: _verify, ...withoutVerify } = feedbackLoop;
const personVerify = { ...withoutVerify, personVerify: {} };

/** The embedded daemon, in this process: its state directory's database (snapshots, inbox), a file journal, the offline answers. */
async function embeddedDaemon() {
  const dir = await mkdtemp(join(tmpdir(), 'inspector-waits-'));
  const db = await LmdbStore.open(dir);
  const store = await LmdbSnapshotStore.open(db);
  const inbox = new LmdbInbox(db);
  const journal = new FileJournal({ dir: join(dir, 'journal'), pollMs: 50 });
  const bus = new MemoryBus();
  const daemon = new Daemon({
    bus,
    flows: provideFlows({ microtask: scripted((request) => handWrittenAnswer(request)).microtask }),
    store,
    journal,
    inbox,
    logger: silentLogger,
    outRoot: join(dir, 'tools'),
  });
  await daemon.start();
  const waiting = async (flowId: string) => {
    await until(async () => ((await store.load(flowId))?.record.waiting?.length ?? 0) > 0, `flow ${flowId} to wait`);
    return (await store.load(flowId))!.record;
  };
  const ended = async (flowId: string) => {
    await until(async () => ((await store.load(flowId))?.record.status ?? 'running') !== 'running', `flow ${flowId} to end`);
    // The host takes its record of the flow as saved a moment after the save lands: until
    // then a retried answer finds it ending, waiting for nothing (EVENT_NOT_ACCEPTED).
    await until(() => (daemon.parts.running(flowId)?.record.status ?? 'gone') !== 'running', `the daemon to let go of flow ${flowId}`);
    return (await store.load(flowId))!.record;
  };
  const close = async () => {
    await daemon.stop();
    await journal.close();
    await bus.close();
    await db.close();
    await rm(dir, { recursive: true, force: true });
  };
  /** The inspector as the daemon serves it: its parts (store, journal, machines, inbox, running flows). */
  const serve = (options: Partial<InspectorServerOptions> = {}) => startInspectorServer({ ...daemon.parts, journal, logger: silentLogger, port: 0, ...options });
  return { dir, store, inbox, journal, daemon, waiting, ended, serve, close };
}

/** Raw HTTP, so the headers are exactly these (fetch adds its own). */
function http(url: string, options: { method?: string; headers?: Record<string, string>; body?: string } = {}) {
  return new Promise<{ status: number; headers: Record<string, string | string[] | undefined>; body: any }>((resolve, reject) => {
    const target = new URL(url);
    const request = httpRequest(
      { host: target.hostname, port: target.port, path: `${target.pathname}${target.search}`, method: options.method ?? 'GET', headers: options.headers ?? {} },
      (response) => {
        let text = '';
        response.on('data', (chunk) => (text += chunk));
        response.on('end', () => {
          let body: unknown = text;
          try {
            body = JSON.parse(text);
          } catch {
            // the page, or an event stream
          }
          resolve({ status: response.statusCode!, headers: response.headers, body });
        });
      },
    );
    request.on('error', reject);
    if (options.body !== undefined) request.write(options.body);
    request.end();
  });
}

const json = { 'content-type': 'application/json' };
const approval = (eventId: string) => JSON.stringify({ type: 'review', eventId, data: { approved: true, feedback: 'good as it is' } });

describe('answering a waiting flow through the inspector (real HTTP)', () => {
  let d: Awaited<ReturnType<typeof embeddedDaemon>>;
  let server: InspectorServer;
  let flowId: string;
  let events: string;
  let own: string;

  beforeAll(async () => {
    d = await embeddedDaemon();
    server = await d.serve();
    flowId = await d.daemon.startFlow('reentrant', personReview);
    await d.waiting(flowId);
    events = new URL(`/api/flows/${flowId}/events`, server.url).href;
    own = new URL(server.url).origin;
  });
  afterAll(async () => {
    await server?.close();
    await d?.close();
  });

  it('says what a waiting flow waits for', async () => {
    const answer = await http(new URL(`/api/flows/${flowId}/waits`, server.url).href);
    expect(answer.status).toBe(200);
    expect(answer.body).toEqual({
      flowId,
      status: 'running',
      waiting: [{ actor: 'root', state: 'awaitingReview', for: "a person's review of the latest pass", events: ['review'], since: expect.any(String) }],
    });
  });

  it('refuses a write that is not JSON or comes from another site (403), and keeps nothing', async () => {
    const refused: Array<[string, Record<string, string>, string]> = [
      // What an HTML form on any site can post, with no preflight.
      ['text/plain', { 'content-type': 'text/plain' }, 'JSON_REQUIRED'],
      ['a form', { 'content-type': 'application/x-www-form-urlencoded' }, 'JSON_REQUIRED'],
      ['a multipart form', { 'content-type': 'multipart/form-data; boundary=x' }, 'JSON_REQUIRED'],
      ['no content type', {}, 'JSON_REQUIRED'],
      ['another origin', { ...json, origin: 'http://attacker.example' }, 'CROSS_SITE_REQUEST'],
      ['a sandboxed page', { ...json, origin: 'null' }, 'CROSS_SITE_REQUEST'],
      ['another port of this host', { ...json, origin: 'http://127.0.0.1:1' }, 'CROSS_SITE_REQUEST'],
      ['a cross-site fetch', { ...json, 'sec-fetch-site': 'cross-site' }, 'CROSS_SITE_REQUEST'],
      ['a same-site fetch', { ...json, 'sec-fetch-site': 'same-site', origin: own }, 'CROSS_SITE_REQUEST'],
    ];
    for (const [what, headers, code] of refused) {
      const answer = await http(events, { method: 'POST', headers, body: approval(`refused-${code}`) });
      expect([what, answer.status, answer.body.ok, answer.body.error.code]).toEqual([what, 403, false, code]);
      expect(answer.body.error.message).not.toContain('\n');
    }
    expect(await d.inbox.read(flowId)).toEqual([]);
    expect((await d.store.load(flowId))!.record).toMatchObject({ status: 'running', state: 'awaitingReview' });
  });

  it('answers a mistake with a status, a code and the flow\'s own message, and keeps nothing', async () => {
    const cases: Array<[string, string, number, string]> = [
      ['an event the flow does not wait for', JSON.stringify({ type: 'score', data: { score: 1 } }), 409, 'EVENT_NOT_ACCEPTED'],
      ['wrong data', JSON.stringify({ type: 'review', data: { approved: 'yes' } }), 400, 'INVALID_EVENT'],
      ['not JSON', '{"type": "review"', 400, 'BAD_JSON'],
      ['no type', JSON.stringify({ data: {} }), 400, 'INVALID_REQUEST'],
      ['a bad event id', JSON.stringify({ type: 'review', eventId: 'a b', data: { approved: true } }), 400, 'INVALID_REQUEST'],
      ['too large', JSON.stringify({ type: 'review', data: { approved: true, feedback: 'x'.repeat(70_000) } }), 413, 'TOO_LARGE'],
    ];
    for (const [what, body, status, code] of cases) {
      const answer = await http(events, { method: 'POST', headers: { ...json, origin: own, 'sec-fetch-site': 'same-origin' }, body });
      expect([what, answer.status, answer.body.ok, answer.body.error?.code]).toEqual([what, status, false, code]);
    }
    const wrongData = await http(events, { method: 'POST', headers: json, body: JSON.stringify({ type: 'review', data: { approved: 'yes' } }) });
    expect(wrongData.body.error.message).toMatch(/^invalid "review" for flow \S+: data\.approved: /);
    expect((await http(new URL('/api/flows/no-such-flow/events', server.url).href, { method: 'POST', headers: json, body: approval('x') })).status).toBe(404);
    expect((await http(events)).status).toBe(405);
    expect(await d.inbox.read(flowId)).toEqual([]);
  });

  it('keeps an answer from its own page for the flow; the daemon applies it once, and a retry is told so', async () => {
    const sent = await http(events, { method: 'POST', headers: { ...json, origin: own, 'sec-fetch-site': 'same-origin' }, body: approval('approve-1') });
    expect(sent.status).toBe(202);
    expect(sent.body).toEqual({ ok: true, flowId, eventId: 'approve-1' });
    const done = await d.ended(flowId);
    expect(done.status).toBe('done');
    const output = done.output as ReentrantOutput;
    expect(output).toMatchObject({ approved: true, passes: 1 });
    expect(output.revisions[0]!.review).toEqual({ approved: true, feedback: 'good as it is', by: 'person' });
    expect(done.received).toEqual(['approve-1']);

    const again = await http(events, { method: 'POST', headers: json, body: approval('approve-1') });
    expect([again.status, again.body]).toEqual([200, { ok: true, flowId, eventId: 'approve-1', duplicate: true }]);
    const late = await http(events, { method: 'POST', headers: json, body: approval('approve-2') });
    expect([late.status, late.body.error.code]).toEqual([409, 'FLOW_FINISHED']);
    expect((await http(new URL(`/api/flows/${flowId}/waits`, server.url).href)).body).toMatchObject({ status: 'done', waiting: [] });
  });
});

describe('the inspector beyond loopback asks for a token', () => {
  const token = 'inspector-test-token-0123456789abcdef';
  let d: Awaited<ReturnType<typeof embeddedDaemon>>;

  beforeAll(async () => {
    d = await embeddedDaemon();
  });
  afterAll(async () => {
    await d?.close();
  });

  it('refuses to start beyond loopback without a token, in one line saying how', async () => {
    const error = await d.serve({ host: '0.0.0.0' }).then(
      (server) => server.close().then(() => undefined),
      (e: unknown) => e as { code: string; message: string },
    );
    expect(error).toMatchObject({ code: 'INSPECTOR_TOKEN_REQUIRED' });
    expect(error!.message).not.toContain('\n');
    expect(error!.message).toContain('0.0.0.0');
    expect(error!.message).toContain('set MICROTASK_INSPECTOR_TOKEN');
  });

  it('asks every API request for it, reading or writing (401), and answers with it', async () => {
    const server = await d.serve({ host: '0.0.0.0', token });
    try {
      const flowId = await d.daemon.startFlow('reentrant', personReview);
      await d.waiting(flowId);
      const api = (path: string) => new URL(path, server.url).href;
      const bearer = { authorization: `Bearer ${token}` };
      // The page's address carries the token in its fragment, which no browser sends to a server.
      expect(server.pageUrl(flowId)).toBe(`${server.url}#token=${token}&flow=${flowId}`);

      for (const path of ['/api/flows', `/api/flows/${flowId}`, `/api/flows/${flowId}/waits`, `/api/flows/${flowId}/stream`, '/api/machines/reentrant']) {
        const without = await http(api(path));
        expect([path, without.status, without.body.error?.code]).toEqual([path, 401, 'UNAUTHORIZED']);
        expect(without.headers['www-authenticate']).toMatch(/^Bearer/);
        const wrong = await http(api(path), { headers: { authorization: `Bearer ${token.replace(/.$/, 'x')}` } });
        expect([path, wrong.status]).toEqual([path, 401]);
      }
      expect((await http(api('/api/flows'), { headers: bearer })).body.flows.map((f: { flowId: string }) => f.flowId)).toContain(flowId);
      // The page and its assets hold no data: served without it (the page then asks for it).
      expect((await http(server.url)).status).toBe(200);
      expect((await http(api('/assets/waits.js'))).status).toBe(200);
      // EventSource sends no header: the stream takes it in the query.
      const controller = new AbortController();
      const stream = await fetch(api(`/api/flows/${flowId}/stream?token=${token}`), { signal: controller.signal });
      expect([stream.status, stream.headers.get('content-type')]).toEqual([200, 'text/event-stream; charset=utf-8']);
      controller.abort();

      // A write without it, or with it in the query only, keeps nothing.
      const events = api(`/api/flows/${flowId}/events`);
      expect((await http(events, { method: 'POST', headers: json, body: approval('no-token') })).status).toBe(401);
      const inQuery = await http(`${events}?token=${token}`, { method: 'POST', headers: json, body: approval('query-token') });
      expect([inQuery.status, inQuery.body.ok]).toEqual([401, false]);
      expect(await d.inbox.read(flowId)).toEqual([]);

      const sent = await http(events, { method: 'POST', headers: { ...json, ...bearer }, body: approval('with-token') });
      expect([sent.status, sent.body]).toEqual([202, { ok: true, flowId, eventId: 'with-token' }]);
      expect(await d.ended(flowId)).toMatchObject({ status: 'done', received: ['with-token'] });
    } finally {
      await server.close();
    }
  });

  it('`microtask inspect` beyond loopback: refused without a token in one line (exit 2); with one, prints the address that carries it', async () => {
    const env = { MICROTASK_STATE_DIR: await mkdtemp(join(tmpdir(), 'inspect-token-')), MICROTASK_INSPECTOR_HOST: '0.0.0.0' };
    try {
      const refused = await runCli(['inspect', '--port', '0'], env);
      expect(refused.code).toBe(2);
      expect(refused.stderr.trim().split('\n')).toHaveLength(1);
      expect(refused.stderr).toContain('set MICROTASK_INSPECTOR_TOKEN');

      const inspector = startCli(['inspect', 'some-flow', '--port', '0'], { ...env, MICROTASK_INSPECTOR_TOKEN: token });
      const address = await until(() => inspector.stdout().match(/^http:\/\/127\.0\.0\.1:\d+\/#\S+$/m)?.[0], 'the inspector address');
      expect(address).toMatch(new RegExp(`#token=${token}&flow=some-flow$`));
      const base = address.slice(0, address.indexOf('#'));
      expect((await http(`${base}api/flows`)).status).toBe(401);
      expect((await http(`${base}api/flows`, { headers: { authorization: `Bearer ${token}` } })).body).toEqual({ flows: [], total: 0 });
      inspector.child.kill('SIGTERM');
      expect(await inspector.exited).toBe(0);
    } finally {
      await rm(env.MICROTASK_STATE_DIR, { recursive: true, force: true });
    }
  }, 60_000);
});

describe('answering from the inspector page (headless Chromium)', () => {
  const executablePath = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
  let browser: Browser;
  let d: Awaited<ReturnType<typeof embeddedDaemon>>;

  beforeAll(async () => {
    if (!existsSync(executablePath)) {
      throw new Error(`no Chromium at ${executablePath}: install it: apt-get install -y chromium (or set CHROMIUM_PATH)`);
    }
    browser = await chromium.launch({
      executablePath,
      args: ['--headless=new', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
    d = await embeddedDaemon();
  });
  afterAll(async () => {
    await browser?.close();
    await d?.close();
  });

  /** A page that fails the test on a script error, a console error not `expected`, or a request leaving the inspector. */
  async function openPage(server: InspectorServer, expected?: RegExp) {
    const page = await browser.newPage({ viewport: { width: 1500, height: 900 } });
    const problems: string[] = [];
    page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
    page.on('console', (m) => m.type() === 'error' && !expected?.test(m.text()) && problems.push(`console: ${m.text()}`));
    const origin = new URL(server.url).origin;
    await page.route('**/*', (route) => (route.request().url().startsWith(origin) ? route.continue() : (problems.push(`left the inspector: ${route.request().url()}`), route.abort())));
    return { page, problems };
  }

  it('shows a reentrant flow waiting for a review; approving it on the page finishes the flow (the token from the address, sent as a header)', async () => {
    const token = 'page-token-0123456789abcdef';
    const server = await d.serve({ token });
    try {
      const flowId = await d.daemon.startFlow('reentrant', personReview);
      await d.waiting(flowId);
      const { page, problems } = await openPage(server);
      await page.goto(server.pageUrl(flowId));
      await page.locator('#chart svg[data-machine="reentrant"]').waitFor();
      // The token leaves the address bar (and the history); the flow stays.
      expect(new URL(page.url()).hash).toBe(`#flow=${flowId}`);

      const wait = page.locator('#waits .wait');
      await wait.waitFor();
      expect(await wait.locator('.for').textContent()).toBe("a person's review of the latest pass");
      expect(await wait.locator('.wait-meta').textContent()).toBe('reentrant in awaitingReview · accepts review');
      await wait.locator('form[data-event="review"] textarea[name="feedback"]').fill('clear and short');
      await wait.locator('form[data-event="review"] button.approve').click();
      await expect.poll(() => page.locator('#answer-result').textContent()).toMatch(/^approval sent \(event inspector-[0-9a-f]+\)/);

      const done = await d.ended(flowId);
      expect(done.status).toBe('done');
      expect((done.output as ReentrantOutput).revisions[0]!.review).toEqual({ approved: true, feedback: 'clear and short', by: 'person' });
      // The page follows: the flow is done and waits for nothing.
      await expect.poll(() => page.locator('#flow-status').textContent(), { timeout: 10_000 }).toBe('done');
      await expect.poll(() => page.locator('#waits .wait').count()).toBe(0);
      expect(problems).toEqual([]);
    } finally {
      await server.close();
    }
  }, 60_000);

  it('a feedback loop scored by a person: a score out of range is refused inline with the flow\'s message, a good one goes on', async () => {
    const server = await d.serve();
    try {
      const flowId = await d.daemon.startFlow('feedback-loop', personVerify);
      await d.waiting(flowId);
      // The refused score: Chromium logs the 400 answer.
      const { page, problems } = await openPage(server, /status of 400/);
      await page.goto(server.pageUrl(flowId));
      const form = page.locator('#waits form[data-event="score"]');
      await form.waitFor();
      expect(await page.locator('#waits .for').textContent()).toBe("a person's score of the latest attempt");
      await form.locator('input[name="score"]').fill('1.5');
      await form.locator('button').click();
      await expect.poll(() => page.locator('#answer-result').textContent()).toMatch(/^invalid "score" for flow \S+: data\.score: /);
      expect(await page.locator('#answer-result').getAttribute('class')).toContain('error');
      expect(await d.inbox.read(flowId)).toEqual([]);

      await form.locator('input[name="score"]').fill('0.9');
      await form.locator('textarea[name="feedback"]').fill('reads well');
      await form.locator('button').click();
      await expect.poll(() => page.locator('#answer-result').textContent()).toMatch(/^score sent/);
      const done = await d.ended(flowId);
      expect(done.status).toBe('done');
      expect(done.output as FeedbackLoopOutput).toMatchObject({ status: 'done', score: 0.9, iterations: 1 });
      expect((done.output as FeedbackLoopOutput).history.map((h) => h.by)).toEqual(['person']);
      await expect.poll(() => page.locator('#flow-status').textContent(), { timeout: 10_000 }).toBe('done');
      expect(problems).toEqual([]);
    } finally {
      await server.close();
    }
  }, 60_000);
});
