// The log table and the in-flight list. Every request is a link to its detail (#log=ID).

import { DASH, bytes, clock, el, int, ms, rate, unchanged, when } from './format.js';

export const detailLink = (id, text) => el('a', { href: `#log=${encodeURIComponent(id)}` }, text);

export function tone(status, state) {
  if (state === 'error' || status >= 500) return 'bad';
  if (status >= 400) return 'warn';
  if (state === 'inflight') return 'info';
  return status >= 200 && status < 400 ? 'ok' : '';
}

const stateTone = { completed: 'ok', inflight: 'info', error: 'bad' };

/** "requested → routed" where the proxy rewrote the name, else the one name. */
export function modelNames(requested, routed) {
  if (requested && routed && requested !== routed) {
    return el('span', { class: 'model' }, el('span', { class: 'muted' }, requested), ' → ', el('b', {}, routed));
  }
  return el('span', { class: 'model' }, el('b', {}, routed || requested || DASH));
}

/** What the row alone does not say: errors and what the proxy did about reasoning. */
export function notes(row) {
  return [
    row.error && el('span', { class: 'tag bad' }, String(row.error)),
    row.reasoning_chars > 0 && el('span', { class: 'tag', title: 'taken out of the answer: removed, or moved to its own field' }, `reasoning: ${int(row.reasoning_chars)} chars`),
    row.reasoned_anyway && el('span', { class: 'tag warn' }, 'reasoned although thinking was off'),
    row.lone_think_close &&
      el(
        'span',
        { class: 'tag warn' },
        `model ${row.routed_model || row.requested_model} starts inside a think block: add it to THINK_OPEN_MODELS`,
      ),
  ].filter(Boolean);
}

function buildRow(row) {
  const inflight = row.state === 'inflight';
  const cells = [
    el('td', { title: when(row.started_at) }, clock(row.started_at)),
    el('td', {}, row.service || DASH),
    el(
      'td',
      { class: 'request' },
      detailLink(row.id, `${row.method || ''} ${row.path || ''}`),
      row.stream && el('span', { class: 'tag' }, 'stream'),
      ...notes(row),
    ),
    el('td', {}, modelNames(row.requested_model, row.routed_model)),
    el('td', {}, el('span', { class: `badge ${tone(row.status, row.state)}` }, row.status ?? (inflight ? '…' : DASH))),
    el('td', { class: stateTone[row.state] }, row.state || DASH),
    el('td', { class: 'num' }, inflight ? 'running' : ms(row.duration_ms)),
    el('td', { class: 'num' }, ms(row.first_token_ms)),
    el('td', { class: 'num' }, rate(row.tokens_per_s)),
    el('td', { class: 'num' }, `↑ ${bytes(row.request_bytes)} ↓ ${bytes(row.response_bytes)}`),
  ];
  return el('tr', { 'data-id': row.id }, cells);
}

const built = new Map(); // id -> {sig, tr}

/** Rows that did not change keep their element, so a focused link stays focused. */
export function renderRows(tbody, rows) {
  const wanted = rows.map((row) => {
    const sig = JSON.stringify(row);
    const old = built.get(row.id);
    return [row.id, old?.sig === sig ? old : { sig, tr: buildRow(row) }];
  });
  built.clear();
  wanted.forEach(([id, entry], i) => {
    built.set(id, entry);
    if (tbody.children[i] !== entry.tr) tbody.insertBefore(entry.tr, tbody.children[i] || null);
  });
  while (tbody.children.length > wanted.length) tbody.lastElementChild.remove();
}

export function renderInflight(list, rows) {
  if (unchanged(list, rows)) return;
  // which replica serves a request matters only when several share the log (DATABASE_URL)
  const replicas = new Set(rows.map((row) => row.instance)).size > 1;
  list.replaceChildren(
    ...rows.map((row) =>
      el(
        'li',
        {},
        detailLink(row.id, `${row.method} ${row.path}`),
        modelNames(row.requested_model, row.routed_model),
        el('span', { class: 'num' }, `${ms(row.elapsed_ms)} · ↓ ${bytes(row.response_bytes)}`),
        replicas && el('span', { class: 'muted', title: 'replica (INSTANCE_NAME)' }, row.instance),
      ),
    ),
  );
}
