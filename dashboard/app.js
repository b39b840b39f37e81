// The dashboard's entry module: the address bar's filters, one overview poll every 2 s
// (stats, in flight, the log page) and a slow one every 10 s (chart, rules).

import { api } from './api.js';
import { drawChart } from './chart.js';
import { followHash, refreshDetail } from './detail.js';
import { $, clock, el, int, ms, unchanged } from './format.js';
import { refreshRules } from './rules.js';
import { renderInflight, renderRows } from './table.js';

const FILTERS = ['model', 'service', 'status', 'state', 'q'];
const LIMIT = 50;
const form = $('filters');
let view = readUrl();
let stats = null;
let locked = false;

function readUrl() {
  const params = new URLSearchParams(location.search);
  return {
    filters: Object.fromEntries(FILTERS.map((key) => [key, params.get(key)?.trim() || ''])),
    page: Math.max(1, parseInt(params.get('page'), 10) || 1),
    limit: Math.min(500, Math.max(1, parseInt(params.get('limit'), 10) || LIMIT)),
  };
}

const chosen = () => Object.fromEntries(Object.entries(view.filters).filter(([, value]) => value));

function writeUrl() {
  const params = new URLSearchParams(chosen());
  if (view.page > 1) params.set('page', view.page);
  if (view.limit !== LIMIT) params.set('limit', view.limit);
  const query = params.toString();
  history.replaceState(null, '', `${location.pathname}${query ? `?${query}` : ''}${location.hash}`);
}

const logQuery = (limit, offset) => ({ ...chosen(), limit, offset });

/** Runs `work` now and then every `every` ms while the page is visible; a new run replaces a pending one. */
function loop(work, every) {
  let timer = 0;
  let generation = 0;
  const run = async () => {
    clearTimeout(timer);
    const mine = ++generation;
    await work(() => mine !== generation);
    if (mine === generation && !document.hidden && !locked) timer = setTimeout(run, every);
  };
  return run;
}

function setLive(state, text) {
  const live = $('live');
  live.dataset.state = state;
  // A status region: changed text is read out, so it changes only when the state does.
  if (live.textContent !== text) live.textContent = text;
}

function needLogin() {
  locked = true;
  $('main').hidden = true;
  $('auth').hidden = false;
  setLive('locked', 'Token needed');
  $('auth-token').focus();
}

const poll = loop(async (stale) => {
  let answers;
  try {
    answers = await Promise.all([
      api('/api/stats'),
      api('/api/inflight'),
      api('/api/logs', logQuery(view.limit, (view.page - 1) * view.limit)),
    ]);
  } catch (error) {
    if (stale()) return;
    if (error.status === 401) needLogin();
    else if (error.status === 400) showMessage(error.message);
    else setLive('lost', 'Connection lost, retrying');
    return;
  }
  if (stale()) return;
  const [newStats, inflight, logs] = answers;
  stats = newStats;
  renderStats();
  $('inflight').hidden = !inflight.inflight.length;
  $('inflight-count').textContent = inflight.inflight.length;
  renderInflight($('inflight-list'), inflight.inflight);
  renderLogs(logs);
  refreshDetail(logs.logs);
  setLive('ok', 'Live');
  $('live').title = `updated ${clock(new Date())}`;
}, 2000);

const slowPoll = loop(async (stale) => {
  if ($('rules').open) await refreshRules();
  const logs = await api('/api/logs', logQuery(500, 0)).catch(() => null);
  if (logs && !stale()) drawChart(logs.logs);
}, 10000);

// ---- stats

function renderStats() {
  const cards = {
    total: int(stats.total),
    'last-hour': int(stats.last_hour),
    'last-24h': int(stats.last_24h),
    errors: int(stats.errors),
    inflight: int(stats.inflight),
    avg: ms(stats.avg_duration_ms),
    p95: ms(stats.p95_duration_ms),
  };
  for (const [name, text] of Object.entries(cards)) $(`stats-${name}`).textContent = text;
  $('stats-errors').parentElement.classList.toggle('alert', stats.errors > 0);
  const names = $('model-names');
  names.options[1].disabled = !stats.by_requested_model;
  if (!stats.by_requested_model) names.value = 'by_model';
  bars($('by-model'), stats[names.value], 'model');
  bars($('by-service'), stats.by_service, 'service');
  bars($('by-status'), stats.by_status, 'status');
  const problems = [
    stats.log_failures > 0 && `${int(stats.log_failures)} failed log writes`,
    stats.log_dropped > 0 && `${int(stats.log_dropped)} dropped log entries`,
  ].filter(Boolean);
  $('log-warning').hidden = !problems.length;
  $('log-warning').textContent =
    `Logging problems: ${problems.join(', ')}. Some requests may be missing from this log.`;
  document.title = stats.inflight ? `(${stats.inflight}) Model Rerouter` : 'Model Rerouter';
}

/** Counts as bars, the biggest first (status codes in order); a click filters the table by that value. */
function bars(list, counts, key) {
  if (unchanged(list, counts || {})) return;
  const entries = Object.entries(counts || {});
  entries.sort(key === 'status' ? (a, b) => a[0] - b[0] : (a, b) => b[1] - a[1] || a[0].localeCompare(b[0]));
  const most = Math.max(1, ...entries.map(([, n]) => n));
  const items = entries.slice(0, 8).map(([name, n]) => {
    const fill = el('span', { class: 'fill' });
    fill.style.width = `${(100 * n) / most}%`;
    const button = el(
      'button',
      { type: 'button', title: `Show only ${key} ${name}` },
      el('span', {}, name),
      el('span', { class: 'num' }, int(n)),
      el('span', { class: 'track' }, fill),
    );
    button.addEventListener('click', () => setFilters({ ...view.filters, [key]: name }));
    return el('li', {}, button);
  });
  if (entries.length > 8) items.push(el('li', { class: 'muted' }, `and ${entries.length - 8} more`));
  list.replaceChildren(...(items.length ? items : [el('li', { class: 'muted' }, 'nothing yet')]));
}

$('model-names').addEventListener('change', () => stats && renderStats());

// ---- the log page

function renderLogs({ logs, total }) {
  if (!logs.length && total > 0 && view.page > 1) {
    view.page = Math.ceil(total / view.limit);
    writeUrl();
    poll();
    return;
  }
  renderRows($('log-table').tBodies[0], logs);
  $('log-table').hidden = !logs.length;
  const filtered = Object.values(view.filters).some(Boolean);
  $('log-empty').hidden = logs.length > 0;
  $('log-empty').textContent = filtered
    ? 'No requests match these filters.'
    : `No requests yet. Point OpenAI clients at ${location.origin}/v1 and Ollama clients at ${location.origin}.`;
  const first = (view.page - 1) * view.limit;
  $('page-info').textContent = logs.length
    ? `${int(first + 1)}–${int(first + logs.length)} of ${int(total)}`
    : `0 of ${int(total)}`;
  $('page-prev').disabled = view.page <= 1;
  $('page-next').disabled = first + logs.length >= total;
}

function showMessage(text) {
  $('filter-message').hidden = !text;
  $('filter-message').textContent = text;
}

function fillForm(filters) {
  for (const key of FILTERS) {
    const input = form.elements[key];
    // A value from the address or a breakdown that the list lacks would show as "all".
    if (input.tagName === 'SELECT' && ![...input.options].some((o) => o.value === filters[key])) {
      input.add(new Option(filters[key]));
    }
    input.value = filters[key];
  }
}

function setFilters(filters) {
  fillForm(filters);
  showMessage('');
  if (JSON.stringify(filters) === JSON.stringify(view.filters)) return;
  view = { ...view, filters, page: 1 };
  writeUrl();
  poll();
  slowPoll();
}

function readForm() {
  const filters = Object.fromEntries(FILTERS.map((key) => [key, form.elements[key].value.trim()]));
  if (filters.status && !/^\d{3}$/.test(filters.status)) showMessage('Status is a number such as 200 or 502.');
  else setFilters(filters);
}

let typing = 0;
form.addEventListener('input', () => {
  clearTimeout(typing);
  typing = setTimeout(readForm, 300);
});
form.addEventListener('submit', (event) => {
  event.preventDefault();
  readForm();
});
$('filter-clear').addEventListener('click', () => setFilters(Object.fromEntries(FILTERS.map((key) => [key, '']))));

function turnPage(step) {
  view.page += step;
  writeUrl();
  poll();
}
$('page-prev').addEventListener('click', () => turnPage(-1));
$('page-next').addEventListener('click', () => turnPage(1));

// A click anywhere on a row does what its link does.
$('log-table').addEventListener('click', (event) => {
  const row = event.target.closest('tr[data-id]');
  if (row && !event.target.closest('a') && !getSelection().toString()) row.querySelector('a').click();
});

// ---- start

$('rules').addEventListener('toggle', () => $('rules').open && slowPoll());
window.addEventListener('hashchange', followHash);
document.addEventListener('visibilitychange', () => {
  if (document.hidden) setLive('paused', 'Paused');
  else if (!locked) {
    poll();
    slowPoll();
  }
});
fillForm(view.filters);
poll();
slowPoll();
followHash();
