// The inspector page: flows list, a flow's statechart with its current state (live over
// Server-Sent Events), its event and microtask logs, and time travel over its saved steps.
// Plain ES modules, no build step, nothing loaded from elsewhere.
import { actorLabel, childLabel, eventLabel } from './actorLabel.js';
import { activePaths, renderStatechart } from './statechart.js';
import { renderWaits } from './waits.js';

const $ = (id) => document.getElementById(id);

// The inspector's token, when it asks for one (beyond loopback, or when set): it comes in
// the address's fragment (`#token=…`, never sent to a server), is kept for this tab only
// and taken out of the address bar, and goes with every API request as a header.
const TOKEN_KEY = 'microtask-inspector-token';
let token = takeToken();
function takeToken() {
  const params = new URLSearchParams(location.hash.slice(1));
  const given = params.get('token');
  if (given) {
    sessionStorage.setItem(TOKEN_KEY, given);
    params.delete('token');
    const rest = params.toString();
    history.replaceState(null, '', `${location.pathname}${location.search}${rest ? `#${rest}` : ''}`);
  }
  return sessionStorage.getItem(TOKEN_KEY) ?? undefined;
}
const authorization = () => (token ? { authorization: `Bearer ${token}` } : {});

const state = {
  flows: [],
  flowId: undefined,
  /** The flow's stored record (null when pruned) and journal entries. */
  record: null,
  entries: [],
  steps: [],
  /** 'live', or an index into `steps`. */
  position: 'live',
  /** Child actor ids from the root down to the actor on show; [] is the root. */
  actorPath: [],
  /** actor path ('a/b') → machine id, learnt while walking snapshots. */
  machineOfPath: new Map(),
  tab: 'events',
  source: undefined,
  openMicrotasks: new Set(),
  /** What the flow waits for now (FlowWait[]), and the key of the waits drawn (kept while unchanged: a half-typed answer stays). */
  waiting: [],
  waitsDrawn: '',
};

const models = new Map(); // machineId → Promise<model>
function model(machineId) {
  if (!models.has(machineId)) {
    models.set(
      machineId,
      fetchJson(`/api/machines/${encodeURIComponent(machineId)}`).catch((e) => {
        models.delete(machineId);
        throw e;
      }),
    );
  }
  return models.get(machineId);
}

async function fetchJson(url) {
  const response = await fetch(url, { headers: authorization() });
  const body = await response.json();
  if (response.status === 401) askForToken();
  if (!response.ok) throw new Error(body?.error ? `${body.error.code}: ${body.error.message}` : `HTTP ${response.status}`);
  return body;
}

/** Refused for want of the token: the page asks for it (the daemon's log does not show it). */
function askForToken() {
  $('token-form').hidden = false;
}
$('token-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const given = $('token-input').value.trim();
  if (!given) return;
  token = given;
  sessionStorage.setItem(TOKEN_KEY, given);
  $('token-input').value = '';
  $('token-form').hidden = true;
  void refreshFlows();
  if (state.flowId) {
    const flowId = state.flowId;
    state.flowId = undefined;
    void openFlow(flowId);
  }
});

// ---------------------------------------------------------------------------------
// Flows list

async function refreshFlows() {
  const status = $('status-filter').value;
  try {
    const query = new URLSearchParams({ limit: '300', ...(status ? { status } : {}) });
    const { flows, total } = await fetchJson(`/api/flows?${query}`);
    state.flows = flows;
    $('flows-more').hidden = total <= flows.length;
    $('flows-more').textContent = `${flows.length} most recent of ${total}`;
    renderFlows();
  } catch (e) {
    console.error(e);
  }
}

function renderFlows() {
  const list = $('flow-list');
  list.replaceChildren(
    ...state.flows.map((flow) => {
      const li = document.createElement('li');
      li.dataset.flowId = flow.flowId;
      li.classList.toggle('selected', flow.flowId === state.flowId);
      li.innerHTML = `<div class="row"><strong class="pattern"></strong><span class="badge"></span></div>
        <div class="id"></div><div class="row muted"><span class="state mono"></span><span class="updated"></span></div>`;
      li.querySelector('.pattern').textContent = flow.pattern;
      const badge = li.querySelector('.badge');
      badge.textContent = flow.status;
      badge.classList.add(flow.status);
      li.querySelector('.id').textContent = flow.flowId;
      li.querySelector('.state').textContent = stateText(flow.state);
      li.querySelector('.updated').textContent = ago(flow.updatedAt);
      li.querySelector('.updated').title = flow.updatedAt;
      li.addEventListener('click', () => navigate({ flow: flow.flowId }));
      return li;
    }),
  );
  $('flows-empty').hidden = state.flows.length > 0;
}

// ---------------------------------------------------------------------------------
// A flow

async function openFlow(flowId) {
  state.source?.close();
  state.source = undefined;
  state.flowId = flowId;
  state.position = 'live';
  state.machineOfPath = new Map();
  state.openMicrotasks = new Set();
  state.waiting = [];
  state.waitsDrawn = '';
  $('answer-result').textContent = '';
  $('welcome').hidden = true;
  $('flow').hidden = false;
  $('flow-title').textContent = flowId;
  renderFlows();
  let body;
  try {
    body = await fetchJson(`/api/flows/${encodeURIComponent(flowId)}`);
  } catch (e) {
    $('flow-meta').textContent = String(e.message ?? e);
    $('chart').replaceChildren();
    return;
  }
  if (state.flowId !== flowId) return;
  state.record = body.record;
  state.entries = body.entries;
  state.steps = body.entries.filter((entry) => entry.kind === 'step');
  state.waiting = body.record?.status === 'running' ? (body.record.waiting ?? []) : [];
  // Rendering the chart waits for its model; the stream starts right away (unless the flow ended).
  if (!body.entries.some((entry) => entry.kind === 'flow' && entry.phase === 'ended')) follow(flowId, body.entries.length);
  else $('connection').classList.remove('on');
  await render();
}

function follow(flowId, since) {
  // EventSource sends no headers: the token goes in the query.
  const query = new URLSearchParams({ since: String(since), ...(token ? { token } : {}) });
  const source = new EventSource(`/api/flows/${encodeURIComponent(flowId)}/stream?${query}`);
  state.source = source;
  source.addEventListener('open', () => $('connection').classList.add('on'));
  source.addEventListener('error', () => $('connection').classList.remove('on'));
  source.addEventListener('entry', (message) => {
    if (state.flowId !== flowId) return;
    const entry = JSON.parse(message.data);
    state.entries.push(entry);
    if (entry.kind === 'step') {
      // A resumed flow may write a step again (its earlier entry was never saved): the last one stands.
      if (state.steps.length && state.steps.at(-1).step >= entry.step) state.steps = state.steps.filter((s) => s.step < entry.step);
      state.steps.push(entry);
      if (state.record) {
        state.record = { ...state.record, snapshot: entry.snapshot, state: entry.rootState, steps: entry.step, updatedAt: entry.at };
      }
    }
    if (entry.kind === 'flow' && state.record) {
      state.record = {
        ...state.record,
        status: entry.status,
        ...(entry.output !== undefined ? { output: entry.output } : {}),
        ...(entry.error ? { error: entry.error } : {}),
      };
    }
    // The list polls every 2 s; the flow on show is told at once.
    const listed = state.flows.find((flow) => flow.flowId === flowId);
    if (listed && (entry.kind === 'step' || entry.kind === 'flow')) {
      if (entry.kind === 'step') Object.assign(listed, { state: entry.rootState, updatedAt: entry.at });
      else Object.assign(listed, { status: entry.status, updatedAt: entry.at });
      renderFlows();
    }
    // A step may begin or end a wait.
    if (entry.kind === 'step' || entry.kind === 'flow') void refreshWaits(flowId);
    // An ended flow never moves again (resuming it only reports its end): stop following.
    if (entry.kind === 'flow' && entry.phase === 'ended') {
      source.close();
      $('connection').classList.remove('on');
    }
    scheduleRender();
  });
}

let renderQueued = false;
function scheduleRender() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => {
    renderQueued = false;
    void render();
  });
}

/** The whole flow's snapshot at the position on show. */
function snapshotAt() {
  if (state.position !== 'live') return state.steps[state.position]?.snapshot;
  const last = state.steps.at(-1);
  if (state.record && (!last || (state.record.steps ?? 0) >= last.step)) return state.record.snapshot;
  return last?.snapshot ?? state.record?.snapshot;
}

/** The step on show (undefined: live with no steps, or before any). */
function stepAt() {
  return state.position === 'live' ? state.steps.at(-1) : state.steps[state.position];
}

/** The snapshot of the child actor at `path` (ids from the root), if it runs at that moment. */
function childSnapshot(snapshot, path) {
  let current = snapshot;
  for (const id of path) current = current?.children?.[id]?.snapshot;
  return current;
}

/** The `src` of the child actor at `path` in the latest step where it runs. */
function srcInAnyStep(path) {
  for (let i = state.steps.length - 1; i >= 0; i--) {
    const parent = childSnapshot(state.steps[i].snapshot, path.slice(0, -1));
    const src = parent?.children?.[path.at(-1)]?.src;
    if (src) return src;
  }
  return undefined;
}

/** Walks down the snapshot to the actor on show; learns which machine each child runs. */
async function actorAt(snapshot) {
  const rootMachine = state.record?.machineId ?? state.steps.find((step) => step.actor === 'root')?.machine ?? state.steps[0]?.machine;
  let machineId = rootMachine;
  let current = snapshot;
  const crumbs = [{ label: machineId ?? 'flow', path: [] }];
  for (let i = 0; i < state.actorPath.length; i++) {
    const id = state.actorPath[i];
    const key = state.actorPath.slice(0, i + 1).join('/');
    const child = current?.children?.[id];
    // Not running at this step: what it runs is known from a step where it does.
    const src = child?.src ?? srcInAnyStep(state.actorPath.slice(0, i + 1));
    if (src && machineId && !state.machineOfPath.has(key)) {
      const parent = await model(machineId);
      const kind = parent.actors[src];
      if (kind?.kind === 'machine') state.machineOfPath.set(key, kind.machineId);
    }
    machineId = state.machineOfPath.get(key);
    current = child?.snapshot;
    crumbs.push({ label: `${childLabel(id)}${machineId ? ` (${machineId})` : ''}`, title: id, path: state.actorPath.slice(0, i + 1) });
  }
  return { machineId, snapshot: current, crumbs };
}

let drawn = { machineId: undefined, chart: undefined };

async function render() {
  if (!state.flowId) return;
  const record = state.record;
  const status = record?.status ?? state.entries.findLast((e) => e.kind === 'flow')?.status ?? 'unknown';
  const pattern = record?.pattern ?? state.entries.find((e) => e.kind === 'flow')?.pattern ?? '';
  $('flow-status').textContent = status;
  $('flow-status').className = `badge ${status}`;
  const resumes = state.entries.filter((e) => e.kind === 'flow' && e.phase === 'resumed').length;
  $('flow-meta').textContent = [
    pattern,
    record?.machineId ? `machine ${record.machineId} v${record.machineVersion}` : 'record pruned: journal only',
    `${state.steps.length} steps`,
    resumes ? `resumed ${resumes}×` : '',
    record ? `updated ${new Date(record.updatedAt).toLocaleTimeString()}` : '',
  ].filter(Boolean).join(' · ');

  renderTravel();
  const snapshot = snapshotAt();
  const step = stepAt();
  const actor = await actorAt(snapshot);

  // Breadcrumb: the root machine, then each child actor down to the one on show.
  $('breadcrumb').replaceChildren(
    ...actor.crumbs.flatMap((crumb, i) => {
      const link = document.createElement('a');
      link.textContent = crumb.label;
      if (crumb.title) link.title = crumb.title;
      link.dataset.actorPath = crumb.path.join('/');
      link.addEventListener('click', () => navigate({ actor: crumb.path }));
      return i === 0 ? [link] : [Object.assign(document.createElement('span'), { className: 'sep', textContent: '›' }), link];
    }),
  );

  const value = actor.snapshot?.value;
  $('current-state').textContent = actor.snapshot ? `${stateText(value)}${statusNote(actor.snapshot.status)}` : '—';
  const actorKey = state.actorPath.length === 0 ? 'root' : state.actorPath.join('/');
  const event = step && step.actor === actorKey ? step.event : undefined;
  $('step-event').textContent = step ? `step ${step.step}: ${actorLabel(step.actor, step.machine)} ${eventLabel(step.event)}` : '';

  renderChildren(actor.snapshot);
  drawWaits();

  const chart = $('chart');
  if (actor.machineId) {
    if (drawn.machineId !== actor.machineId || !chart.querySelector('svg')) {
      const laid = await model(actor.machineId);
      drawn = { machineId: actor.machineId, chart: renderStatechart(chart, laid) };
    }
    // The transition taken starts from a state active at the step before.
    const index = state.position === 'live' ? state.steps.length - 1 : state.position;
    const previous = index > 0 ? childSnapshot(state.steps[index - 1].snapshot, state.actorPath)?.value : undefined;
    const activeG = drawn.chart.highlight(value, event, previous);
    applyZoom();
    chart.querySelector('.notice')?.remove();
    if (!actor.snapshot) {
      chart.prepend(Object.assign(document.createElement('div'), { className: 'notice', textContent: 'This child actor is not running at this step.' }));
    } else if (activeG) {
      keepInView(chart, activeG);
    }
  } else {
    drawn = { machineId: undefined, chart: undefined };
    chart.replaceChildren(Object.assign(document.createElement('div'), { className: 'notice', textContent: 'No statechart: this actor is not a machine, or it is not running at this step.' }));
  }

  renderEvents();
  renderMicrotasks();
  renderContext(actor.snapshot);
  renderOutput();
}

/** The chart's scale: 'fit' (all of it in view) or a factor. */
let zoom = 1;
function applyZoom() {
  const svg = $('chart').querySelector('svg');
  if (!svg) return;
  const [, , width, height] = svg.getAttribute('viewBox').split(' ').map(Number);
  const chart = $('chart');
  const scale = zoom === 'fit' ? Math.min(1, (chart.clientWidth - 4) / width, (chart.clientHeight - 4) / height) : zoom;
  svg.setAttribute('width', String(Math.round(width * scale)));
  svg.setAttribute('height', String(Math.round(height * scale)));
  svg.dataset.scale = String(scale);
}

function keepInView(container, g) {
  const scale = Number(container.querySelector('svg')?.dataset.scale ?? 1);
  const raw = g.getBBox();
  const box = { x: raw.x * scale, y: raw.y * scale, width: raw.width * scale, height: raw.height * scale };
  const margin = 60;
  const view = { left: container.scrollLeft, top: container.scrollTop, width: container.clientWidth, height: container.clientHeight };
  // Out of view or at its very edge: bring it to the middle, with what led to it above.
  if (box.x < view.left + margin || box.x + box.width > view.left + view.width - margin) {
    container.scrollLeft = Math.max(0, box.x + box.width / 2 - view.width / 2);
  }
  if (box.y < view.top + margin || box.y + box.height > view.top + view.height - margin) {
    container.scrollTop = Math.max(0, box.y + box.height / 2 - view.height / 2);
  }
}

function renderTravel() {
  const count = state.steps.length;
  const live = state.position === 'live';
  const index = live ? count - 1 : state.position;
  const slider = $('step-slider');
  slider.max = String(Math.max(1, count));
  slider.value = String(Math.max(1, index + 1));
  slider.disabled = count === 0;
  $('step-first').disabled = count === 0 || index <= 0;
  $('step-back').disabled = count === 0 || index <= 0;
  $('step-forward').disabled = live || index >= count - 1;
  $('live').classList.toggle('on', live);
  const step = stepAt();
  $('position-label').textContent = count === 0
    ? 'no steps saved yet'
    : `${live ? 'live · ' : ''}step ${step.step} of ${state.steps.at(-1).step} · ${new Date(step.at).toLocaleTimeString()}`;
}

function travelTo(index) {
  if (state.steps.length === 0) return;
  const clamped = Math.max(0, Math.min(state.steps.length - 1, index));
  state.position = clamped;
  void render();
}

function renderChildren(snapshot) {
  const container = $('children');
  const children = Object.entries(snapshot?.children ?? {});
  if (children.length === 0) {
    container.replaceChildren();
    return;
  }
  container.replaceChildren(
    Object.assign(document.createElement('span'), { className: 'muted', textContent: 'Children:' }),
    ...children.map(([id, child]) => {
      const chip = document.createElement('span');
      const isMachine = child.snapshot && typeof child.snapshot === 'object' && 'value' in child.snapshot;
      chip.className = `chip ${isMachine ? 'machine' : 'promise'}`;
      chip.dataset.childId = id;
      chip.textContent = isMachine ? `${childLabel(id)} · ${stateText(child.snapshot.value)}` : `${child.src}${child.snapshot?.input?.key ? ` · ${child.snapshot.input.key}` : ''} (in flight)`;
      chip.title = `${id} (${child.src})`;
      if (isMachine) chip.addEventListener('click', () => navigate({ actor: [...state.actorPath, id] }));
      return chip;
    }),
  );
}

// ---------------------------------------------------------------------------------
// What the flow waits for, and a person's answer

let waitsReading = false;
let waitsAgain = false;
/** Reads what the flow waits for now (the journal's steps do not say; the saved record does); asked while reading, reads once more after. */
async function refreshWaits(flowId) {
  if (waitsReading) {
    waitsAgain = true;
    return;
  }
  waitsReading = true;
  try {
    do {
      waitsAgain = false;
      const { waiting } = await fetchJson(`/api/flows/${encodeURIComponent(flowId)}/waits`);
      if (state.flowId !== flowId) return;
      state.waiting = waiting;
      drawWaits();
    } while (waitsAgain);
  } catch (e) {
    console.warn(e);
  } finally {
    waitsReading = false;
  }
}

function drawWaits() {
  const key = `${state.flowId} ${JSON.stringify(state.waiting)}`;
  if (key !== state.waitsDrawn) {
    state.waitsDrawn = key;
    const flowId = state.flowId;
    renderWaits($('wait-list'), { machineId: state.record?.machineId, waiting: state.waiting }, (type, data, eventId) => sendAnswer(flowId, type, data, eventId), tell);
  }
  $('waits').hidden = state.waiting.length === 0 && $('answer-result').textContent === '';
}

async function sendAnswer(flowId, type, data, eventId) {
  const response = await fetch(`/api/flows/${encodeURIComponent(flowId)}/events`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...authorization() },
    body: JSON.stringify({ type, eventId, ...(data !== undefined ? { data } : {}) }),
  });
  if (response.status === 401) askForToken();
  const answer = await response.json();
  if (answer.ok) void refreshWaits(flowId);
  return answer;
}

function tell(text, kind) {
  const result = $('answer-result');
  result.textContent = text;
  result.className = `answer-result ${kind}`;
  $('waits').hidden = false;
}

function renderEvents() {
  const current = stepAt();
  const currentIndex = state.position === 'live' ? state.steps.length - 1 : state.position;
  // Each transition as it happened (when the journal has them) with the step that saved
  // it; else the steps themselves. A click travels to that step.
  const hasTransitions = state.entries.some((entry) => entry.kind === 'transition');
  const rows = [];
  let unsaved = [];
  for (const entry of state.entries) {
    if (entry.kind === 'flow') rows.push({ entry });
    else if (entry.kind === 'transition') {
      const row = { entry, step: undefined };
      rows.push(row);
      unsaved.push(row);
    } else if (entry.kind === 'step') {
      for (const row of unsaved) row.step = entry;
      // A step no transition row leads to (older journals, a save of a child's change) is listed itself.
      if (!hasTransitions || unsaved.length === 0) rows.push({ entry, step: entry });
      unsaved = [];
    }
  }
  const currentAt = state.position === 'live' ? Infinity : Date.parse(current?.at ?? '') || Infinity;
  const list = document.createElement('ul');
  list.className = 'log';
  for (const { entry, step } of rows) {
    const li = document.createElement('li');
    if (entry.kind === 'flow') {
      li.className = 'lifecycle';
      li.innerHTML = '<span class="when"></span><strong></strong>';
      li.querySelector('.when').textContent = time(entry.at);
      li.querySelector('strong').textContent = `flow ${entry.phase} (${entry.status})${entry.error ? `: ${entry.error.code} ${entry.error.message}` : ''}`;
      if (Date.parse(entry.at) > currentAt) li.classList.add('future');
    } else {
      li.innerHTML = '<span class="when"></span><span class="step"></span><span class="actor mono"></span> <span class="event"></span> → <span class="target"></span>';
      li.querySelector('.when').textContent = time(entry.at);
      li.querySelector('.step').textContent = step ? `#${step.step}` : '#…';
      li.querySelector('.step').title = step ? `saved in step ${step.step}` : 'not saved yet';
      li.querySelector('.actor').textContent = entry.actor === 'root' ? entry.machine : `${actorLabel(entry.actor)} (${entry.machine})`;
      li.querySelector('.actor').title = entry.actor;
      li.querySelector('.event').textContent = eventLabel(entry.event);
      li.querySelector('.target').textContent = stateText(entry.state);
      const index = step ? state.steps.indexOf(step) : -1;
      if (index >= 0) {
        li.dataset.step = String(step.step);
        li.addEventListener('click', () => travelTo(index));
      }
      if (current && step === current) li.classList.add('current');
      if (state.position !== 'live' && (index < 0 || index > currentIndex)) li.classList.add('future');
    }
    list.append(li);
  }
  const tab = $('tab-events');
  const atBottom = tab.scrollTop + tab.clientHeight >= tab.scrollHeight - 8;
  tab.replaceChildren(list);
  if (state.position === 'live' && atBottom) tab.scrollTop = tab.scrollHeight;
  else list.querySelector('li.current')?.scrollIntoView({ block: 'nearest' });
}

function renderMicrotasks() {
  const current = stepAt();
  const currentAt = state.position === 'live' ? Infinity : Date.parse(current?.at ?? '') || Infinity;
  // A microtask's start and end, paired by key (a resumed flow may run one key again).
  const rows = [];
  const open = new Map();
  // On a child actor: its microtasks and those of the actors below it.
  const prefix = state.actorPath.join('/');
  const mine = (entry) => prefix === '' || entry.actor === prefix || entry.actor.startsWith(`${prefix}/`);
  for (const entry of state.entries) {
    if (entry.kind !== 'microtask' || !mine(entry)) continue;
    if (entry.phase === 'started') {
      const row = { started: entry, finished: undefined };
      rows.push(row);
      open.set(entry.key, row);
    } else {
      const row = open.get(entry.key);
      if (row) {
        row.finished = entry;
        open.delete(entry.key);
      } else rows.push({ started: undefined, finished: entry });
    }
  }
  const totals = { input: 0, output: 0, calls: 0 };
  const container = document.createElement('div');
  for (const row of rows) {
    const first = row.started ?? row.finished;
    const result = row.finished?.result;
    const details = document.createElement('details');
    details.className = 'mt';
    details.dataset.key = first.key;
    if (state.openMicrotasks.has(first.key)) details.open = true;
    details.addEventListener('toggle', () => (details.open ? state.openMicrotasks.add(first.key) : state.openMicrotasks.delete(first.key)));
    const startsLater = Date.parse(first.at) > currentAt;
    if (startsLater) details.classList.add('future');
    const finishedLater = row.finished && Date.parse(row.finished.at) > currentAt;
    const summary = document.createElement('summary');
    const tags = [];
    // At a step before it began, a microtask is neither running nor finished.
    if (startsLater) tags.push(['future', 'not started']);
    else if (!row.finished || finishedLater) tags.push(['running', 'running']);
    else if (result) {
      tags.push(result.success ? ['ok', 'ok'] : ['error', result.error?.kind ?? 'failed']);
      if (!result.success && result.fallback !== undefined) tags.push(['fallback', 'fallback']);
      if (result.cached) tags.push(['cached', 'cached']);
    }
    summary.innerHTML = '<span class="type"></span><span class="actor"></span><span class="tags"></span><span class="nums"></span>';
    summary.querySelector('.type').textContent = first.taskType;
    summary.querySelector('.actor').textContent = actorLabel(first.actor);
    summary.querySelector('.actor').title = first.actor;
    summary.querySelector('.tags').append(
      ...tags.map(([kind, label]) => Object.assign(document.createElement('span'), { className: `tag ${kind}`, textContent: label })),
    );
    if (result && !finishedLater) {
      totals.input += result.usage.inputTokens;
      totals.output += result.usage.outputTokens;
      totals.calls += result.usage.calls;
      summary.querySelector('.nums').textContent = `${result.usage.inputTokens}→${result.usage.outputTokens} tok · ${Math.round(result.durationMs)} ms`;
    }
    details.append(summary);
    const dl = document.createElement('dl');
    const field = (name, value, pre = false) => {
      if (value === undefined || value === '') return;
      const dt = Object.assign(document.createElement('dt'), { textContent: name });
      const dd = document.createElement('dd');
      if (pre) dd.append(Object.assign(document.createElement('pre'), { textContent: typeof value === 'string' ? value : JSON.stringify(value, null, 2) }));
      else dd.textContent = value;
      dl.append(dt, dd);
    };
    field('key', first.key);
    field('started', row.started ? time(row.started.at) : undefined);
    field('system', row.started?.system, true);
    field('prompt', row.started?.prompt, true);
    field('data', row.started?.data, true);
    if (result && !finishedLater) {
      field('answer', result.result, true);
      field('error', result.error ? `${result.error.kind}${result.error.retryable ? ' (retryable)' : ''}: ${result.error.message}` : undefined, true);
      field('fallback', result.fallback, true);
      field('tokens', `in ${result.usage.inputTokens}, out ${result.usage.outputTokens}, cache read ${result.usage.cacheReadInputTokens}, cache write ${result.usage.cacheCreationInputTokens}, calls ${result.usage.calls}`);
      field('duration', `${result.durationMs.toFixed(1)} ms${result.cached ? ' (cached: no model call)' : ''}`);
      field('model', [result.model, result.stopReason, result.requestId].filter(Boolean).join(' · '));
    }
    details.append(dl);
    container.append(details);
  }
  const head = document.createElement('p');
  head.className = 'muted';
  const of = prefix ? ` of ${actorLabel(prefix)}` : '';
  head.textContent = rows.length === 0 ? `No microtasks${of} yet.` : `${rows.length} microtasks${of} · ${totals.calls} calls · ${totals.input} tokens in, ${totals.output} out`;
  $('tab-microtasks').replaceChildren(head, container);
}

function renderContext(snapshot) {
  const tab = $('tab-context');
  if (!snapshot) {
    tab.replaceChildren(Object.assign(document.createElement('p'), { className: 'muted', textContent: 'Nothing at this step.' }));
    return;
  }
  const pre = document.createElement('pre');
  pre.id = 'context-json';
  pre.textContent = JSON.stringify(snapshot.context ?? snapshot.input ?? null, null, 2);
  pre.style.maxHeight = 'none';
  tab.replaceChildren(pre);
}

function renderOutput() {
  const record = state.record;
  const ended = state.entries.findLast((e) => e.kind === 'flow' && e.phase === 'ended');
  const output = record?.output ?? ended?.output;
  const error = record?.error ?? ended?.error;
  const started = state.entries.find((e) => e.kind === 'flow' && e.phase === 'started');
  const parts = [];
  const block = (title, value) => {
    parts.push(Object.assign(document.createElement('h3'), { textContent: title }));
    parts.push(Object.assign(document.createElement('pre'), { textContent: JSON.stringify(value, null, 2) }));
  };
  if (error) block('Error', error);
  if (output !== undefined) block('Output', output);
  else parts.push(Object.assign(document.createElement('p'), { className: 'muted', textContent: 'No output yet.' }));
  if (started?.input !== undefined) block('Input', started.input);
  $('tab-output').replaceChildren(...parts);
}

// ---------------------------------------------------------------------------------
// Helpers

/**
 * What an actor's snapshot status adds to its state. `done` means the machine reached a final
 * state, whichever: read after a state named `failed` it said "failed (done)".
 */
function statusNote(status) {
  if (!status || status === 'active') return '';
  return status === 'done' ? ' (final state)' : ` (${status})`;
}

function stateText(value) {
  if (value === undefined || value === null) return '—';
  if (typeof value === 'string') return value;
  return activePaths(value).filter((path, _, all) => !all.some((other) => other.startsWith(`${path}.`))).join(', ');
}

function time(at) {
  const d = new Date(at);
  return `${d.toLocaleTimeString([], { hour12: false })}.${String(d.getMilliseconds()).padStart(3, '0')}`;
}

function ago(at) {
  const seconds = Math.round((Date.now() - Date.parse(at)) / 1000);
  if (seconds < 60) return `${Math.max(0, seconds)}s ago`;
  if (seconds < 3600) return `${Math.round(seconds / 60)}m ago`;
  if (seconds < 86400) return `${Math.round(seconds / 3600)}h ago`;
  return new Date(at).toLocaleDateString();
}

// ---------------------------------------------------------------------------------
// Routing: #flow=<id>&actor=<a/b> so a view can be linked to and reloaded.

function navigate({ flow, actor }) {
  const params = new URLSearchParams(location.hash.slice(1));
  if (flow !== undefined) {
    params.set('flow', flow);
    params.delete('actor');
  }
  if (actor !== undefined) {
    if (actor.length) params.set('actor', actor.join('/'));
    else params.delete('actor');
  }
  location.hash = params.toString();
}

function route() {
  // `#/flows/<id>` (as `microtask inspect <flowId>` prints it) is the same as `#flow=<id>`.
  const path = /^#\/flows\/([^/?&]+)$/.exec(location.hash);
  if (path) {
    history.replaceState(null, '', `#flow=${path[1]}`);
  }
  const params = new URLSearchParams(location.hash.slice(1));
  const flow = params.get('flow') ?? undefined;
  state.actorPath = (params.get('actor') ?? '').split('/').filter(Boolean);
  if (flow && flow !== state.flowId) void openFlow(flow);
  else if (flow) void render();
}

for (const button of document.querySelectorAll('.tabs button')) {
  button.addEventListener('click', () => {
    state.tab = button.dataset.tab;
    for (const other of document.querySelectorAll('.tabs button')) other.classList.toggle('selected', other === button);
    for (const name of ['events', 'microtasks', 'context', 'output']) $(`tab-${name}`).hidden = name !== state.tab;
  });
}
$('step-first').addEventListener('click', () => travelTo(0));
$('step-back').addEventListener('click', () => travelTo((state.position === 'live' ? state.steps.length - 1 : state.position) - 1));
$('step-forward').addEventListener('click', () => state.position !== 'live' && travelTo(state.position + 1));
$('step-slider').addEventListener('input', (event) => travelTo(Number(event.target.value) - 1));
$('live').addEventListener('click', () => {
  state.position = 'live';
  void render();
});
document.addEventListener('keydown', (event) => {
  if (!state.flowId || event.target instanceof HTMLInputElement || event.target instanceof HTMLSelectElement) return;
  if (event.key === 'ArrowLeft') $('step-back').click();
  if (event.key === 'ArrowRight') $('step-forward').click();
});
$('zoom-in').addEventListener('click', () => {
  zoom = Math.min(2, (zoom === 'fit' ? Number($('chart').querySelector('svg')?.dataset.scale ?? 1) : zoom) * 1.25);
  applyZoom();
});
$('zoom-out').addEventListener('click', () => {
  zoom = Math.max(0.2, (zoom === 'fit' ? Number($('chart').querySelector('svg')?.dataset.scale ?? 1) : zoom) / 1.25);
  applyZoom();
});
$('zoom-fit').addEventListener('click', () => {
  zoom = 'fit';
  applyZoom();
});
window.addEventListener('resize', () => zoom === 'fit' && applyZoom());
$('status-filter').addEventListener('change', () => void refreshFlows());
window.addEventListener('hashchange', route);

void refreshFlows();
setInterval(() => {
  void refreshFlows();
  // A wait saved after its step was journaled (NATS saves and journals together) shows within a poll.
  if (state.flowId && state.record?.status === 'running') void refreshWaits(state.flowId);
}, 2000);
route();
