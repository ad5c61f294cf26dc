// What a waiting flow waits for, and the forms a person answers it with: a review
// (approve / reject with feedback), a score (0..1 with feedback), or any other event (its
// data as JSON). The page (app.js) fetches the waits and sends the answers; this file only
// draws them. Plain ES module, no build step.
import { actorLabel } from './actorLabel.js';

/**
 * Draws the waits of a flow into `list`, each with a form per event it accepts.
 * @param {HTMLElement} list
 * @param {{ machineId?: string, waiting: Array<{ actor: string, state: unknown, for: string, events: string[], until?: string }> }} flow
 * @param {(type: string, data: unknown, eventId: string) => Promise<{ ok: boolean, duplicate?: boolean, eventId?: string, error?: { code: string, message: string } }>} send
 * @param {(text: string, kind: 'ok' | 'error') => void} tell where the outcome of a send is shown
 */
export function renderWaits(list, flow, send, tell) {
  list.replaceChildren(
    ...flow.waiting.map((wait) => {
      const box = document.createElement('div');
      box.className = 'wait';
      box.dataset.actor = wait.actor;
      const head = document.createElement('p');
      head.className = 'wait-for';
      head.append(Object.assign(document.createElement('strong'), { textContent: 'Waiting for ' }), Object.assign(document.createElement('span'), { className: 'for', textContent: wait.for }));
      const meta = document.createElement('p');
      meta.className = 'wait-meta muted';
      meta.textContent = [
        `${actorLabel(wait.actor, flow.machineId)} in ${stateName(wait.state)}`,
        `accepts ${wait.events.join(', ')}`,
      ].join(' · ');
      if (wait.until) {
        const until = Object.assign(document.createElement('span'), { className: 'until', textContent: ` · ${deadline(wait.until)}` });
        until.title = wait.until;
        meta.append(until);
      }
      box.append(head, meta, ...wait.events.map((type) => answerForm(type, send, tell)));
      return box;
    }),
  );
}

/**
 * One event's form. Its event id is made once, when the form is drawn: a second click
 * (or a retry after a lost answer) sends the same id, which the flow applies once.
 */
function answerForm(type, send, tell) {
  const form = document.createElement('form');
  form.className = 'answer';
  form.dataset.event = type;
  // The flow's schema is the one judge: its message is shown as it is.
  form.noValidate = true;
  const eventId = newEventId();
  const feedback = () => Object.assign(document.createElement('textarea'), { name: 'feedback', rows: 2, placeholder: 'Feedback (optional)' });
  const button = (text, value, className) => Object.assign(document.createElement('button'), { type: 'submit', textContent: text, value, className });
  const actions = document.createElement('div');
  actions.className = 'actions';
  let read;
  if (type === 'review') {
    form.append(feedback());
    actions.append(button('Approve', 'approve', 'approve'), button('Reject', 'reject', 'reject'));
    read = (submitter) => ({ approved: submitter?.value === 'approve', feedback: form.elements.feedback.value });
  } else if (type === 'score') {
    const label = Object.assign(document.createElement('label'), { textContent: 'Score (0 to 1) ' });
    label.append(Object.assign(document.createElement('input'), { type: 'number', name: 'score', min: '0', max: '1', step: '0.05' }));
    form.append(label, feedback());
    actions.append(button('Send score', 'score', 'send'));
    read = () => {
      const text = form.elements.score.value;
      return { score: text === '' ? undefined : Number(text), feedback: form.elements.feedback.value };
    };
  } else {
    const data = Object.assign(document.createElement('textarea'), { name: 'data', rows: 3, placeholder: `the data of "${type}", as JSON (empty: none)` });
    data.className = 'mono';
    form.append(data);
    actions.append(button(`Send ${type}`, type, 'send'));
    read = () => {
      const text = form.elements.data.value.trim();
      return text === '' ? undefined : JSON.parse(text);
    };
  }
  form.append(actions);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    let data;
    try {
      data = read(event.submitter);
    } catch (e) {
      tell(`the data is not JSON: ${e.message}`, 'error');
      return;
    }
    const buttons = [...form.querySelectorAll('button')];
    for (const b of buttons) b.disabled = true;
    try {
      const answer = await send(type, data, eventId);
      if (answer.ok) {
        const what = type === 'review' ? (data.approved ? 'approval' : 'rejection') : type;
        tell(
          answer.duplicate
            ? `the flow had already applied this ${what} (event ${answer.eventId})`
            : `${what} sent (event ${answer.eventId}): the flow goes on once the process running it applies it`,
          'ok',
        );
      } else {
        tell(answer.error?.message ?? 'not sent', 'error');
      }
    } catch (e) {
      tell(`not sent: ${e.message}`, 'error');
    } finally {
      for (const b of buttons) b.disabled = false;
    }
  });
  return form;
}

/** An id the server accepts (letters, digits, `-`): random, and made without a secure context (a token-guarded inspector on plain HTTP has no crypto.randomUUID). */
function newEventId() {
  const bytes = crypto.getRandomValues(new Uint8Array(12));
  return `inspector-${[...bytes].map((b) => b.toString(16).padStart(2, '0')).join('')}`;
}

function stateName(value) {
  if (typeof value === 'string') return value;
  return JSON.stringify(value);
}

/** `until 14:03 (in 23 h)`, or that it passed (the flow takes its timeout path). */
function deadline(iso) {
  const at = new Date(iso);
  const ms = at.getTime() - Date.now();
  const minutes = Math.round(Math.abs(ms) / 60_000);
  const span = minutes < 1 ? 'less than a minute' : minutes < 90 ? `${minutes} min` : minutes < 48 * 60 ? `${Math.round(minutes / 60)} h` : `${Math.round(minutes / 1440)} days`;
  const when = at.toLocaleString([], { hour12: false });
  return ms >= 0 ? `until ${when} (in ${span})` : `deadline ${when} passed ${span} ago`;
}
