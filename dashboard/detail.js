// The detail of one request in a modal <dialog>, opened by the address's #log=ID.

import { api } from './api.js';
import { DASH, $, bytes, el, int, ms, rate, when } from './format.js';
import { modelNames, notes, tone } from './table.js';

const dialog = $('detail');
const body = $('detail-body');
let shown = null; // {id, sig, data} of the request on screen

export function followHash() {
  const id = new URLSearchParams(location.hash.slice(1)).get('log');
  if (!id) {
    dialog.close();
    return;
  }
  if (shown?.id !== id) {
    shown = { id, sig: '', data: null };
    $('detail-title').textContent = 'Request';
    body.replaceChildren(el('p', { class: 'muted' }, 'Loading…'));
  }
  if (!dialog.open) dialog.showModal();
  load(id);
}

/** Fetch the detail again while its request runs, or when its row in the table changed. */
export function refreshDetail(rows) {
  const data = shown?.data;
  if (!data) return;
  const row = rows.find((r) => r.id === shown.id);
  if (data.state === 'inflight' || (row && (row.state !== data.state || row.status !== data.status))) load(shown.id);
}

dialog.addEventListener('close', () => {
  shown = null;
  if (location.hash) history.replaceState(null, '', location.pathname + location.search);
});
// A click on the backdrop lands on the dialog itself: the content fills it.
dialog.addEventListener('click', (event) => event.target === dialog && dialog.close());
$('detail-close').addEventListener('click', () => dialog.close());

async function load(id) {
  let data;
  try {
    data = await api(`/api/logs/${encodeURIComponent(id)}`);
  } catch (error) {
    if (shown?.id === id && !shown.data) {
      const text =
        error.status === 404 ? 'This request is not in the log (any more).' : `Could not load it: ${error.message}`;
      body.replaceChildren(el('p', { class: 'tag bad' }, text));
    }
    return;
  }
  const sig = JSON.stringify(data);
  if (shown?.id !== id || shown.sig === sig) return;
  Object.assign(shown, { sig, data });
  const scroll = body.scrollTop;
  render(data);
  body.scrollTop = scroll;
}

function render(d) {
  $('detail-title').textContent = `${d.method || ''} ${d.path || ''}`;
  const parts = [
    el(
      'p',
      { class: 'models' },
      modelNames(d.requested_model, d.routed_model),
      ' ',
      el('span', { class: `badge ${tone(d.status, d.state)}` }, d.status ?? d.state),
    ),
    notes(d).length > 0 && el('p', { class: 'request' }, notes(d)),
    fields(d),
    d.response_text != null && section('Answer', el('pre', { id: 'detail-answer' }, d.response_text)),
    section('Response body', el('pre', { id: 'detail-response-body' }, pretty(d.response_body))),
    section('Request body', el('pre', { id: 'detail-request-body' }, pretty(d.request_body))),
    section('Request headers', headers(d.request_headers)),
  ];
  body.replaceChildren(...parts.filter(Boolean));
}

const optional = (value, format = String) => (value == null || value === '' ? null : format(value));

function fields(d) {
  const pairs = [
    ['Requested model', d.requested_model ?? DASH],
    ['Routed model', d.routed_model ?? DASH],
    ['Response model', optional(d.response_model)],
    ['Instance', optional(d.instance)],
    ['Note', optional(d.note)],
    ['Status', d.status ?? DASH],
    ['State', d.state],
    ['Service', d.service ?? DASH],
    ['Upstream', d.upstream ?? DASH],
    ['Started', when(d.started_at)],
    ['Streamed', d.stream ? 'yes' : 'no'],
    ['Duration', d.state === 'inflight' ? 'running' : ms(d.duration_ms)],
    ['Upstream time', optional(d.upstream_ms, ms)],
    ['Time to first token', optional(d.first_token_ms, ms)],
    ['Upstream time to first token', optional(d.upstream_first_token_ms, ms)],
    ['Prompt tokens', optional(d.prompt_tokens, int)],
    ['Completion tokens', optional(d.completion_tokens, int)],
    ['Tokens/s', optional(d.tokens_per_s, rate)],
    ['Request size', bytes(d.request_bytes)],
    ['Response size', bytes(d.response_bytes)],
    ['ID', d.id],
  ];
  const items = pairs
    .filter(([, value]) => value != null)
    .map(([name, value]) => el('div', {}, el('dt', {}, name), el('dd', {}, value)));
  return el('dl', { id: 'detail-fields' }, items);
}

const section = (title, content) => el('section', {}, el('h3', {}, title), content);

/** Indented JSON when the body parses as JSON (a truncated one does not), else as stored. */
function pretty(text) {
  if (!text) return '(empty)';
  try {
    return JSON.stringify(JSON.parse(text), null, 2);
  } catch {
    return text;
  }
}

function headers(pairs) {
  if (!pairs?.length) return el('p', { class: 'muted' }, 'None recorded.');
  const rows = pairs.map(([name, value]) => el('tr', {}, el('th', {}, name), el('td', {}, value)));
  return el('table', { id: 'detail-headers' }, el('tbody', {}, rows));
}
