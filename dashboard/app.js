/*
 * Dashboard of openai-model-rerouter: plain JS, no build step, no dependencies.
 *
 * Everything shown here comes from logged requests and is attacker-controlled, so
 * the DOM is only ever built with createElement / textContent / setAttribute:
 * this file never assigns innerHTML or anything like it.
 *
 * URL state: filters and page live in the query string
 * (?model=&service=&status=&state=&q=&page=&limit=), the open detail in the
 * hash (#log=<id>), so a reload or a shared link shows the same view.
 */
'use strict';

(function () {
  const STATS_MS = 1000;
  const INFLIGHT_MS = 1000;
  const LOGS_MS = 2000;
  const FETCH_TIMEOUT_MS = 10000;
  const DEBOUNCE_MS = 300;
  const DEFAULT_LIMIT = 50;
  const FILTER_KEYS = ['model', 'service', 'status', 'state', 'q'];
  const STATES = ['inflight', 'completed', 'error', 'aborted'];
  const TRUNCATED = /\n…\[truncated: (\d+) bytes in total\]$/;

  const state = {
    filters: { model: '', service: '', status: '', state: '', q: '' },
    page: 1,
    limit: DEFAULT_LIMIT,
    total: 0,
    rows: new Map(), // id -> {tr, sig}
    freshOk: false, // highlight new rows (not on the first load of a view)
    inflight: new Map(), // id -> {elapsed, at}
    detailId: null,
    detail: null,
    detailSig: null,
    detailOpener: null,
    lastOk: null,
    failing: new Set(),
    auth: false,
    sigs: {},
  };

  // ---------------------------------------------------------------- helpers

  const $ = (id) => document.getElementById(id);

  /** Build an element. props: class, text, dataset, or plain attributes (setAttribute). */
  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    if (props) {
      for (const [key, value] of Object.entries(props)) {
        if (value == null || value === false) continue;
        if (key === 'class') node.className = value;
        else if (key === 'text') node.textContent = String(value);
        else node.setAttribute(key, value === true ? '' : String(value));
      }
    }
    add(node, children);
    return node;
  }

  function add(node, children) {
    for (const child of [children].flat(Infinity)) {
      if (child == null || child === false) continue;
      node.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function setText(id, text) {
    const node = $(id);
    const value = String(text);
    if (node && node.textContent !== value) node.textContent = value;
  }

  /** Re-render a container only when its data changed. */
  function changed(key, data) {
    const sig = JSON.stringify(data);
    if (state.sigs[key] === sig) return false;
    state.sigs[key] = sig;
    return true;
  }

  function debounce(fn, ms) {
    let timer = null;
    return function (...args) {
      clearTimeout(timer);
      timer = setTimeout(() => fn.apply(this, args), ms);
    };
  }

  const pad = (n, w = 2) => String(n).padStart(w, '0');

  function parseTime(iso) {
    if (!iso) return null;
    const date = new Date(iso);
    return isNaN(date.getTime()) ? null : date;
  }

  function fmtClock(date) {
    return `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}`;
  }

  function fmtFullDate(date) {
    try {
      return date.toLocaleString(undefined, { dateStyle: 'full', timeStyle: 'medium' });
    } catch (e) {
      return date.toString();
    }
  }

  function fmtInt(n) {
    if (n == null || n === '' || isNaN(Number(n))) return '—';
    return Number(n).toLocaleString();
  }

  function fmtDuration(ms) {
    if (ms == null || isNaN(Number(ms))) return '—';
    ms = Number(ms);
    if (ms < 1) return '<1 ms';
    if (ms < 1000) return `${Math.round(ms)} ms`;
    if (ms < 10000) return `${(ms / 1000).toFixed(2)} s`;
    if (ms < 60000) return `${(ms / 1000).toFixed(1)} s`;
    const minutes = Math.floor(ms / 60000);
    if (minutes < 60) return `${minutes}m ${pad(Math.floor((ms % 60000) / 1000))}s`;
    return `${Math.floor(minutes / 60)}h ${pad(minutes % 60)}m`;
  }

  function fmtElapsed(ms) {
    if (ms < 1000) return `${Math.max(0, Math.round(ms / 10) * 10)} ms`;
    if (ms < 60000) return `${(ms / 1000).toFixed(1)} s`;
    return fmtDuration(ms);
  }

  function fmtBytes(n) {
    if (n == null || isNaN(Number(n))) return '—';
    n = Number(n);
    if (n < 1024) return `${n} B`;
    const units = ['KB', 'MB', 'GB'];
    let value = n / 1024;
    let unit = 0;
    while (value >= 1024 && unit < units.length - 1) {
      value /= 1024;
      unit += 1;
    }
    return `${value < 10 ? value.toFixed(1) : Math.round(value)} ${units[unit]}`;
  }

  function statusClass(status, rowState) {
    if (status == null || status === '') {
      if (rowState === 'inflight') return 'tone-blue';
      if (rowState === 'error') return 'tone-red';
      return 'tone-grey';
    }
    const s = Number(status);
    if (s >= 200 && s < 300) return 'tone-green';
    if (s >= 300 && s < 400) return 'tone-slate';
    if (s >= 400 && s < 500) return 'tone-amber';
    if (s >= 500) return 'tone-red';
    return 'tone-grey';
  }

  function stateClass(rowState) {
    return {
      inflight: 'tone-blue',
      completed: 'tone-green',
      error: 'tone-red',
      aborted: 'tone-grey',
    }[rowState] || 'tone-grey';
  }

  function statusBadge(row) {
    const text = row.status != null ? String(row.status) : row.state === 'inflight' ? '…' : '—';
    return el('span', { class: `badge ${statusClass(row.status, row.state)}`, text });
  }

  function stateBadge(rowState) {
    return el('span', { class: `state ${stateClass(rowState)}`, text: rowState || 'unknown' });
  }

  function streamPill(row) {
    if (!row.stream) return null;
    const kind = row.service === 'ollama' ? 'NDJSON' : 'SSE';
    return el('span', { class: 'pill pill-stream', title: `Streamed response (${kind})`, text: 'stream' });
  }

  /** "requested → routed [rewritten]" when they differ, else just the name. */
  function modelView(requested, routed) {
    const box = el('span', { class: 'model' });
    if (requested && routed && requested !== routed) {
      add(box, [
        el('span', { class: 'model-requested', title: `requested: ${requested}`, text: requested }),
        el('span', { class: 'arrow', 'aria-label': 'rewritten to', text: '→' }),
        el('span', { class: 'model-routed', title: `sent upstream: ${routed}`, text: routed }),
        el('span', { class: 'pill pill-rewritten', text: 'rewritten' }),
      ]);
    } else if (requested || routed) {
      const name = routed || requested;
      add(box, el('span', { class: 'model-name', title: name, text: name }));
    } else {
      add(box, el('span', { class: 'muted', text: '—' }));
    }
    return box;
  }

  function hasFilters() {
    return FILTER_KEYS.some((k) => state.filters[k]);
  }

  // ---------------------------------------------------------------- URL state

  function readUrl() {
    const params = new URLSearchParams(location.search);
    for (const key of FILTER_KEYS) state.filters[key] = (params.get(key) || '').trim();
    const page = parseInt(params.get('page'), 10);
    state.page = page > 0 ? page : 1;
    const limit = parseInt(params.get('limit'), 10);
    state.limit = limit > 0 && limit <= 500 ? limit : DEFAULT_LIMIT;
  }

  function writeUrl() {
    const params = new URLSearchParams();
    for (const key of FILTER_KEYS) if (state.filters[key]) params.set(key, state.filters[key]);
    if (state.page > 1) params.set('page', String(state.page));
    if (state.limit !== DEFAULT_LIMIT) params.set('limit', String(state.limit));
    const query = params.toString();
    const hash = state.detailId ? `#log=${encodeURIComponent(state.detailId)}` : '';
    const url = location.pathname + (query ? `?${query}` : '') + hash;
    if (url !== location.pathname + location.search + location.hash) {
      history.replaceState(null, '', url);
    }
  }

  function hashLogId() {
    const match = /^#log=(.+)$/.exec(location.hash);
    if (!match) return null;
    try {
      return decodeURIComponent(match[1]);
    } catch (e) {
      return null;
    }
  }

  // ---------------------------------------------------------------- fetching

  class AuthError extends Error {}
  class Cancelled extends Error {}
  class HttpError extends Error {
    constructor(status, message) {
      super(message || `HTTP ${status}`);
      this.status = status;
    }
  }

  async function api(path, outer) {
    const ctrl = new AbortController();
    const timer = setTimeout(() => ctrl.abort(), FETCH_TIMEOUT_MS);
    const onAbort = () => ctrl.abort();
    if (outer) outer.addEventListener('abort', onAbort, { once: true });
    try {
      const res = await fetch(path, {
        signal: ctrl.signal,
        cache: 'no-store',
        credentials: 'same-origin',
        headers: { Accept: 'application/json' },
      });
      if (res.status === 401) throw new AuthError('token needed');
      if (!res.ok) {
        let message = '';
        try {
          const body = await res.json();
          message = body && typeof body.error === 'string' ? body.error : '';
        } catch (e) {
          /* not JSON */
        }
        throw new HttpError(res.status, message);
      }
      return await res.json();
    } catch (e) {
      if (outer && outer.aborted) throw new Cancelled();
      throw e;
    } finally {
      clearTimeout(timer);
      if (outer) outer.removeEventListener('abort', onAbort);
    }
  }

  /** A fetch loop: runs fn, then waits `interval`; never two at once; stops while hidden. */
  class Poller {
    constructor(name, interval, fn) {
      this.name = name;
      this.interval = interval;
      this.fn = fn;
      this.timer = null;
      this.busy = false;
      this.again = false;
    }

    async run() {
      clearTimeout(this.timer);
      this.timer = null;
      if (this.busy) {
        this.again = true;
        return;
      }
      this.busy = true;
      try {
        await this.fn();
        markOk(this.name);
      } catch (e) {
        markFailed(this.name, e);
      } finally {
        this.busy = false;
      }
      if (this.again) {
        this.again = false;
        this.run();
      } else {
        this.schedule();
      }
    }

    schedule() {
      clearTimeout(this.timer);
      this.timer = null;
      if (document.visibilityState === 'hidden') return;
      this.timer = setTimeout(() => this.run(), this.interval);
    }

    stop() {
      clearTimeout(this.timer);
      this.timer = null;
    }
  }

  function markOk(name) {
    state.failing.delete(name);
    state.lastOk = new Date();
    if (state.auth) hideAuth();
    renderLive();
  }

  function markFailed(name, error) {
    if (error instanceof Cancelled) return;
    if (error instanceof AuthError) {
      showAuth();
      return;
    }
    if (error instanceof HttpError && error.status >= 400 && error.status < 500) {
      // The server answered: the connection is fine, the question was not.
      state.failing.delete(name);
      renderLive();
      return;
    }
    state.failing.add(name);
    renderLive();
  }

  function renderLive() {
    const live = $('live');
    let mode;
    let text;
    if (state.auth) {
      mode = 'locked';
      text = 'Token needed';
    } else if (document.visibilityState === 'hidden') {
      mode = 'paused';
      text = 'Paused';
    } else if (state.failing.size) {
      mode = 'lost';
      text = state.lastOk
        ? `Connection lost — retrying (last update ${fmtClock(state.lastOk)})`
        : 'Connection lost — retrying…';
    } else if (state.lastOk) {
      mode = 'ok';
      text = `Live · updated ${fmtClock(state.lastOk)}`;
    } else {
      mode = 'connecting';
      text = 'Connecting…';
    }
    if (live.dataset.state !== mode) live.dataset.state = mode;
    setText('live-text', text);
  }

  function showAuth() {
    if (state.auth) return;
    state.auth = true;
    document.body.classList.add('needs-auth');
    $('auth').hidden = false;
    $('main').hidden = true;
    renderLive();
    $('auth-token').focus({ preventScroll: true });
  }

  function hideAuth() {
    state.auth = false;
    document.body.classList.remove('needs-auth');
    $('auth').hidden = true;
    $('main').hidden = false;
  }

  // ---------------------------------------------------------------- stats

  async function pollStats() {
    renderStats(await api('/api/stats'));
  }

  function renderStats(s) {
    setText('stats-total', fmtInt(s.total));
    setText('stats-last-hour', fmtInt(s.last_hour));
    setText('stats-last-24h', fmtInt(s.last_24h));
    setText('stats-errors', fmtInt(s.errors));
    setText('stats-inflight', fmtInt(s.inflight));
    setText('stats-avg', fmtDuration(s.avg_duration_ms));
    setText('stats-p95', fmtDuration(s.p95_duration_ms));
    $('card-errors').classList.toggle('card-alert', Number(s.errors) > 0);
    $('card-inflight').classList.toggle('card-active', Number(s.inflight) > 0);

    renderBars('stats-by-model', s.by_model, 'model', 6);
    renderBars('stats-by-service', s.by_service, 'service', 3);
    renderChips('stats-by-status', s.by_status);

    const problems = [];
    if (Number(s.log_failures) > 0) problems.push(`${fmtInt(s.log_failures)} failed log writes`);
    if (Number(s.log_dropped) > 0) problems.push(`${fmtInt(s.log_dropped)} dropped log entries`);
    const warning = $('stats-warnings');
    if (problems.length) {
      let text = `Logging problems: ${problems.join(', ')} — some requests may be missing from this log.`;
      if (Number(s.log_queue) > 0) text += ` (${fmtInt(s.log_queue)} waiting to be written)`;
      setText('stats-warnings', text);
      warning.hidden = false;
    } else {
      warning.hidden = true;
    }
    document.querySelector('.breakdowns').hidden = !(Number(s.total) > 0);
    const inflight = Number(s.inflight) || 0;
    const title = inflight > 0 ? `(${inflight}) Model Rerouter` : 'Model Rerouter';
    if (document.title !== title) document.title = title;
  }

  function renderBars(id, counts, filterKey, max) {
    if (!changed(id, counts || {})) return;
    const list = $(id);
    const entries = Object.entries(counts || {})
      .map(([name, n]) => [name, Number(n) || 0])
      .sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]));
    if (!entries.length) {
      list.replaceChildren(el('li', { class: 'muted', text: 'nothing yet' }));
      return;
    }
    const top = entries[0][1] || 1;
    const items = entries.slice(0, max).map(([name, n]) => {
      const fill = el('span', { class: 'bar-fill' });
      fill.style.width = `${Math.max(2, (n / top) * 100)}%`;
      if (filterKey === 'status') fill.classList.add(statusClass(name));
      const label = name === '' || name === 'null' || name === 'None' ? '(none)' : name;
      const button = el(
        'button',
        { type: 'button', class: 'bar', title: `Show only ${filterKey} ${label}` },
        el('span', { class: 'bar-name', text: label }),
        el('span', { class: 'bar-count', text: fmtInt(n) }),
        el('span', { class: 'bar-track' }, fill),
      );
      const usable = filterKey !== 'status' || /^\d+$/.test(name);
      if (usable && label !== '(none)') {
        button.addEventListener('click', () => applyFilter(filterKey, name));
      } else {
        button.disabled = true;
      }
      return el('li', null, button);
    });
    if (entries.length > max) {
      const rest = entries.slice(max).reduce((sum, [, n]) => sum + n, 0);
      items.push(el('li', { class: 'bar-more muted', text: `+ ${entries.length - max} more (${fmtInt(rest)})` }));
    }
    list.replaceChildren(...items);
  }

  /** Status counts as small coloured chips, 2xx first. */
  function renderChips(id, counts) {
    if (!changed(id, counts || {})) return;
    const list = $(id);
    const entries = Object.entries(counts || {}).map(([name, n]) => [name, Number(n) || 0]);
    if (!entries.length) {
      list.replaceChildren(el('li', { class: 'muted', text: 'nothing yet' }));
      return;
    }
    const code = (name) => (/^\d+$/.test(name) ? Number(name) : 1000);
    entries.sort((a, b) => code(a[0]) - code(b[0]) || a[0].localeCompare(b[0]));
    list.replaceChildren(
      ...entries.map(([name, n]) => {
        const numeric = /^\d+$/.test(name);
        const label = numeric ? name : 'no status';
        const chip = el(
          'button',
          { type: 'button', class: `chip ${statusClass(numeric ? name : null)}`, title: numeric ? `Show only status ${name}` : 'Requests without a status (in flight, failed or aborted)' },
          el('span', { class: 'chip-name', text: label }),
          el('span', { class: 'chip-count', text: fmtInt(n) }),
        );
        if (numeric) chip.addEventListener('click', () => applyFilter('status', name));
        else chip.disabled = true;
        return el('li', null, chip);
      }),
    );
  }

  function applyFilter(key, value) {
    state.filters[key] = value;
    const input = $(`filter-${key}`);
    ensureOption(input, value);
    input.value = value;
    filtersChanged();
  }

  // ---------------------------------------------------------------- in flight

  async function pollInflight() {
    renderInflight(await api('/api/inflight'));
  }

  const inflightItems = new Map(); // id -> {li, sig, bytes}

  function renderInflight(data) {
    const list = Array.isArray(data && data.inflight) ? data.inflight : [];
    const now = performance.now();
    state.inflight = new Map(list.map((r) => [r.id, { elapsed: Number(r.elapsed_ms) || 0, at: now }]));
    $('inflight-section').hidden = list.length === 0;
    setText('inflight-count', list.length);

    const ul = $('inflight-list');
    const keep = new Set();
    list.forEach((r, i) => {
      keep.add(r.id);
      const sig = JSON.stringify([r.method, r.path, r.requested_model, r.routed_model, r.started_at]);
      let item = inflightItems.get(r.id);
      if (!item || item.sig !== sig) {
        if (item) item.li.remove();
        item = { li: buildInflightItem(r), sig };
        inflightItems.set(r.id, item);
      }
      const bytes = item.li.querySelector('.inflight-bytes');
      const text = `↓ ${fmtBytes(r.response_bytes)}`;
      if (bytes.textContent !== text) bytes.textContent = text;
      if (ul.children[i] !== item.li) ul.insertBefore(item.li, ul.children[i] || null);
    });
    for (const [id, item] of inflightItems) {
      if (!keep.has(id)) {
        item.li.remove();
        inflightItems.delete(id);
      }
    }
    tick();
  }

  function buildInflightItem(r) {
    const li = el(
      'li',
      { class: 'inflight-item', 'data-id': r.id, tabindex: '0', role: 'button', title: 'Show details' },
      el('span', { class: 'method', text: r.method || '' }),
      el('span', { class: 'path mono', title: r.path || '', text: r.path || '' }),
      el('span', { class: 'inflight-model' }, modelView(r.requested_model, r.routed_model)),
      el('span', { class: 'inflight-elapsed live-elapsed num', 'data-id': r.id, text: fmtElapsed(Number(r.elapsed_ms) || 0) }),
      el('span', { class: 'inflight-bytes num muted' }),
    );
    li.addEventListener('click', () => openDetail(r.id, li));
    li.addEventListener('keydown', (ev) => {
      if (ev.key === 'Enter' || ev.key === ' ') {
        ev.preventDefault();
        openDetail(r.id, li);
      }
    });
    return li;
  }

  /** Live elapsed times between two polls. */
  function tick() {
    const now = performance.now();
    for (const node of document.querySelectorAll('.live-elapsed[data-id]')) {
      const entry = state.inflight.get(node.dataset.id);
      if (!entry) continue;
      const text = fmtElapsed(entry.elapsed + (now - entry.at));
      if (node.textContent !== text) node.textContent = text;
    }
  }

  // ---------------------------------------------------------------- log table

  let logsCtrl = null;

  async function pollLogs() {
    if (logsCtrl) logsCtrl.abort();
    const ctrl = new AbortController();
    logsCtrl = ctrl;
    const params = new URLSearchParams();
    params.set('limit', String(state.limit));
    params.set('offset', String((state.page - 1) * state.limit));
    for (const key of FILTER_KEYS) if (state.filters[key]) params.set(key, state.filters[key]);
    let data;
    try {
      data = await api(`/api/logs?${params}`, ctrl.signal);
    } catch (e) {
      if (e instanceof HttpError && e.status === 400) {
        showFilterMessage(e.message || 'The server refused these filters.');
      }
      throw e;
    } finally {
      if (logsCtrl === ctrl) logsCtrl = null;
    }
    showFilterMessage('');
    renderLogs(data);
    if (state.detailId && (!state.detail || state.detail.state === 'inflight' || rowDiffers())) {
      await loadDetail();
    }
  }

  /** The open request's row in the table changed since its detail was fetched. */
  function rowDiffers() {
    const entry = state.rows.get(state.detailId);
    if (!entry || !state.detail) return false;
    return entry.row.state !== state.detail.state || entry.row.status !== state.detail.status;
  }

  function restartLogs() {
    if (logsCtrl) logsCtrl.abort();
    logsPoller.run();
  }

  function renderLogs(data) {
    const rows = Array.isArray(data && data.logs) ? data.logs : [];
    const total = Number(data && data.total) || 0;
    state.total = total;

    if (!rows.length && total > 0 && state.page > 1) {
      // The page ran past the end (filters narrowed, rows expired): go to the last one.
      state.page = Math.max(1, Math.ceil(total / state.limit));
      writeUrl();
      restartLogs();
      return;
    }

    const tbody = $('log-table').tBodies[0];
    const wanted = [];
    const next = new Map();
    for (const row of rows) {
      if (!row || row.id == null) continue;
      const id = String(row.id);
      const sig = JSON.stringify(row);
      let entry = state.rows.get(id);
      if (!entry || entry.sig !== sig) {
        const tr = buildRow(row);
        if (!entry && state.freshOk) tr.classList.add('fresh');
        entry = { tr, sig, row };
      }
      next.set(id, entry);
      wanted.push(entry.tr);
    }
    wanted.forEach((tr, i) => {
      if (tbody.children[i] !== tr) tbody.insertBefore(tr, tbody.children[i] || null);
    });
    while (tbody.children.length > wanted.length) tbody.lastElementChild.remove();
    state.rows = next;
    state.freshOk = true;
    markSelected();
    tick();

    const empty = $('log-empty');
    if (!wanted.length) {
      renderEmpty(empty);
      empty.hidden = false;
      $('log-table-wrap').hidden = true;
    } else {
      empty.hidden = true;
      $('log-table-wrap').hidden = false;
    }
    renderPager(wanted.length);
  }

  function renderEmpty(box) {
    const filtered = hasFilters();
    if (!changed('empty', [filtered, location.origin])) return;
    if (filtered) {
      const clear = el('button', { type: 'button', class: 'btn', text: 'Clear filters' });
      clear.addEventListener('click', clearFilters);
      box.replaceChildren(el('p', { class: 'empty-title', text: 'No requests match these filters' }), clear);
    } else {
      box.replaceChildren(
        el('p', { class: 'empty-title', text: 'No requests yet — point your app at this address' }),
        el(
          'dl',
          { class: 'empty-addresses' },
          el('dt', { text: 'OpenAI clients' }),
          el('dd', null, el('code', { text: `${location.origin}/v1` })),
          el('dt', { text: 'Ollama clients' }),
          el('dd', null, el('code', { text: location.origin })),
        ),
        el('p', { class: 'muted', text: 'Requests show up here as soon as they pass through the proxy.' }),
      );
    }
  }

  function renderPager(shown) {
    const first = (state.page - 1) * state.limit;
    const info = state.total === 0 || shown === 0
      ? `0 of ${fmtInt(state.total)}`
      : `${fmtInt(first + 1)}–${fmtInt(first + shown)} of ${fmtInt(state.total)}`;
    setText('page-info', info);
    $('page-prev').disabled = state.page <= 1;
    $('page-next').disabled = first + shown >= state.total;
  }

  function buildRow(r) {
    const id = String(r.id);
    const started = parseTime(r.started_at);
    const tr = el('tr', {
      'data-id': id,
      'data-state': STATES.includes(r.state) ? r.state : 'unknown',
      tabindex: '0',
    });

    const time = started
      ? el('td', { class: 'col-time num', title: `${fmtFullDate(started)}\n${r.started_at}`, text: fmtClock(started) })
      : el('td', { class: 'col-time num', title: r.started_at || '', text: r.started_at ? String(r.started_at) : '—' });

    const service = el('td', { class: 'col-service' }, el('span', { class: `svc svc-${r.service === 'ollama' ? 'ollama' : r.service === 'openai' ? 'openai' : 'other'}`, text: r.service || '—' }));

    const method = el('td', { class: 'col-method' }, el('span', { class: 'method', text: r.method || '' }), ' ', streamPill(r));

    const pathCell = el('td', { class: 'col-path' }, el('div', { class: 'path mono', title: r.path || '', text: r.path || '' }));
    if (r.error) pathCell.appendChild(el('div', { class: 'row-error', title: String(r.error), text: String(r.error) }));

    const duration = el('td', { class: 'col-duration num' });
    if (r.state === 'inflight') {
      duration.appendChild(el('span', { class: 'live-elapsed running', 'data-id': id, text: 'running' }));
    } else {
      duration.textContent = fmtDuration(r.duration_ms);
    }

    const size = el(
      'td',
      { class: 'col-size num' },
      el('span', { class: 'size-up', title: `request: ${fmtInt(r.request_bytes)} bytes`, text: `↑ ${fmtBytes(r.request_bytes)}` }),
      el('span', { class: 'size-down', title: `response: ${fmtInt(r.response_bytes)} bytes`, text: `↓ ${fmtBytes(r.response_bytes)}` }),
    );

    add(tr, [
      time,
      service,
      method,
      pathCell,
      el('td', { class: 'col-model' }, modelView(r.requested_model, r.routed_model)),
      el('td', { class: 'col-status' }, statusBadge(r)),
      el('td', { class: 'col-state', title: r.error ? String(r.error) : null }, stateBadge(r.state)),
      duration,
      size,
    ]);
    tr.addEventListener('click', (ev) => {
      const selection = window.getSelection ? window.getSelection() : null;
      if (selection && !selection.isCollapsed && tr.contains(selection.anchorNode)) return; // selecting text
      openDetail(id, tr);
    });
    tr.addEventListener('keydown', (ev) => {
      if (ev.key === 'Enter' || ev.key === ' ') {
        ev.preventDefault();
        openDetail(id, tr);
      }
    });
    return tr;
  }

  function markSelected() {
    for (const [id, entry] of state.rows) entry.tr.classList.toggle('selected', id === state.detailId);
    for (const [id, item] of inflightItems) item.li.classList.toggle('selected', id === state.detailId);
  }

  // ---------------------------------------------------------------- filters

  function ensureOption(input, value) {
    if (input.tagName !== 'SELECT' || !value) return;
    if (![...input.options].some((o) => o.value === value)) input.appendChild(el('option', { value, text: value }));
  }

  function fillFilterInputs() {
    for (const key of FILTER_KEYS) {
      const input = $(`filter-${key}`);
      ensureOption(input, state.filters[key]);
      input.value = state.filters[key];
    }
    validateStatus();
  }

  /** The API takes a whole number; anything else is not sent. */
  function validateStatus() {
    const input = $('filter-status');
    const raw = input.value.trim();
    const ok = raw === '' || /^\d{1,3}$/.test(raw);
    input.classList.toggle('invalid', !ok);
    input.setAttribute('aria-invalid', ok ? 'false' : 'true');
    showFilterMessage(ok ? '' : 'Status must be a number such as 200 or 502.');
    return ok ? raw : null;
  }

  function showFilterMessage(text) {
    const box = $('filter-message');
    box.hidden = !text;
    setText('filter-message', text);
  }

  function readFilterInputs() {
    let any = false;
    for (const key of FILTER_KEYS) {
      let value = $(`filter-${key}`).value.trim();
      if (key === 'status') {
        const ok = validateStatus();
        if (ok === null) value = state.filters.status; // keep the last good one until fixed
      }
      if (state.filters[key] !== value) {
        state.filters[key] = value;
        any = true;
      }
    }
    return any;
  }

  function filtersChanged() {
    state.page = 1;
    state.freshOk = false;
    writeUrl();
    restartLogs();
  }

  const onFilterInput = debounce(() => {
    if (readFilterInputs()) filtersChanged();
  }, DEBOUNCE_MS);

  function clearFilters() {
    for (const key of FILTER_KEYS) {
      state.filters[key] = '';
      $(`filter-${key}`).value = '';
    }
    validateStatus();
    filtersChanged();
  }

  // ---------------------------------------------------------------- detail

  function openDetail(id, opener) {
    const same = state.detailId === id;
    state.detailId = id;
    if (opener) state.detailOpener = opener;
    writeUrl();
    markSelected();
    const panel = $('detail');
    const wasHidden = panel.hidden;
    panel.hidden = false;
    $('detail-backdrop').hidden = false;
    document.body.classList.add('detail-open');
    if (!same || !state.detail) {
      state.detail = null;
      state.detailSig = null;
      const row = state.rows.get(id);
      setText('detail-title', row ? `${row.row.method || ''} ${row.row.path || ''}`.trim() : 'Request');
      setText('detail-subtitle', '');
      $('detail-body').replaceChildren(el('p', { class: 'muted loading', text: 'Loading…' }));
      $('detail-body').scrollTop = 0;
    }
    if (wasHidden) $('detail-close').focus({ preventScroll: true });
    loadDetail();
  }

  function closeDetail() {
    if (!state.detailId && $('detail').hidden) return;
    state.detailId = null;
    state.detail = null;
    state.detailSig = null;
    $('detail').hidden = true;
    $('detail-backdrop').hidden = true;
    document.body.classList.remove('detail-open');
    writeUrl();
    markSelected();
    const opener = state.detailOpener;
    state.detailOpener = null;
    if (opener && opener.isConnected) opener.focus({ preventScroll: true });
  }

  let detailLoading = null;

  async function loadDetail() {
    const id = state.detailId;
    if (!id) return;
    if (detailLoading === id) return;
    detailLoading = id;
    try {
      const data = await api(`/api/logs/${encodeURIComponent(id)}`);
      if (state.detailId !== id) return;
      const sig = JSON.stringify(data);
      if (sig === state.detailSig) return;
      state.detail = data;
      state.detailSig = sig;
      renderDetail(data);
    } catch (e) {
      if (state.detailId !== id) return;
      if (e instanceof AuthError) {
        showAuth();
        return;
      }
      if (e instanceof HttpError && e.status === 404) {
        state.detail = { state: 'gone' };
        $('detail-body').replaceChildren(
          el('p', { class: 'notice', text: 'This request is not in the log (any more). It may have expired or never been recorded.' }),
        );
        return;
      }
      if (!state.detail) {
        $('detail-body').replaceChildren(
          el('p', { class: 'notice notice-error', text: `Could not load this request: ${e.message || e}. Retrying…` }),
        );
      }
    } finally {
      if (detailLoading === id) detailLoading = null;
    }
  }

  function splitTruncation(text) {
    if (typeof text !== 'string') return { text: text == null ? '' : String(text), marker: null, total: null };
    const match = TRUNCATED.exec(text);
    if (!match) return { text, marker: null, total: null };
    return { text: text.slice(0, match.index), marker: match[0].slice(1), total: Number(match[1]) };
  }

  function tryJson(text) {
    const t = text.trim();
    if (!t || (t[0] !== '{' && t[0] !== '[')) return undefined;
    try {
      return JSON.parse(t);
    } catch (e) {
      return undefined;
    }
  }

  const isObject = (v) => v !== null && typeof v === 'object' && !Array.isArray(v);

  /** Collects answer text per choice index, tool calls, finish reasons and errors. */
  class Answer {
    constructor() {
      this.choices = new Map();
      this.tools = new Map();
      this.finish = new Map();
      this.errors = [];
      this.events = 0;
      this.done = false;
    }

    text(index, value) {
      if (typeof value !== 'string' || value === '') return;
      this.choices.set(index, (this.choices.get(index) || '') + value);
    }

    error(value) {
      if (value == null) return;
      if (typeof value === 'string') this.errors.push(value);
      else if (isObject(value) && typeof value.message === 'string') this.errors.push(value.message);
      else this.errors.push(JSON.stringify(value));
    }

    /** One OpenAI-style object: a stream chunk or a whole answer. */
    openai(obj) {
      if (!isObject(obj)) return;
      if (Array.isArray(obj.choices)) {
        for (const c of obj.choices) {
          if (!isObject(c)) continue;
          const index = Number.isInteger(c.index) ? c.index : 0;
          if (isObject(c.delta)) {
            this.text(index, c.delta.content);
            this.toolCalls(index, c.delta.tool_calls);
          }
          if (isObject(c.message)) {
            this.text(index, c.message.content);
            this.toolCalls(index, c.message.tool_calls);
          }
          this.text(index, c.text);
          if (c.finish_reason) this.finish.set(index, String(c.finish_reason));
        }
      } else if (obj.type === 'response.output_text.delta') {
        this.text(0, obj.delta);
      } else if (obj.type === 'content_block_delta' && isObject(obj.delta)) {
        this.text(0, obj.delta.text);
      }
      if (obj.error) this.error(obj.error);
    }

    /** One Ollama object: an NDJSON line or a whole answer. */
    ollama(obj) {
      if (!isObject(obj)) return;
      if (isObject(obj.message)) {
        this.text(0, obj.message.content);
        this.toolCalls(0, obj.message.tool_calls);
      }
      this.text(0, obj.response);
      if (obj.done === true) {
        this.done = true;
        if (obj.done_reason) this.finish.set(0, String(obj.done_reason));
      }
      if (obj.error) this.error(obj.error);
    }

    toolCalls(index, calls) {
      if (!Array.isArray(calls)) return;
      calls.forEach((call, i) => {
        if (!isObject(call)) return;
        const key = `${index}:${Number.isInteger(call.index) ? call.index : i}`;
        const entry = this.tools.get(key) || { choice: index, name: '', args: '' };
        const fn = isObject(call.function) ? call.function : {};
        if (typeof fn.name === 'string') entry.name += fn.name;
        if (typeof fn.arguments === 'string') entry.args += fn.arguments;
        else if (fn.arguments != null) entry.args += JSON.stringify(fn.arguments);
        this.tools.set(key, entry);
      });
    }

    get empty() {
      return !this.choices.size && !this.tools.size;
    }
  }

  /** What kind of body this is, and the answer inside it. */
  function analyzeResponse(text, row) {
    const body = text.trim();
    if (!body) return { kind: 'empty' };
    const whole = tryJson(body);
    if (whole !== undefined) {
      const answer = new Answer();
      if (row.service === 'ollama' || (isObject(whole) && ('response' in whole || 'done' in whole))) answer.ollama(whole);
      else answer.openai(whole);
      return { kind: 'json', value: whole, answer };
    }
    if (/^data:/m.test(body)) return analyzeSse(text);
    const lines = body.split(/\r?\n/).filter((l) => l.trim());
    const objects = [];
    let bad = 0;
    for (const line of lines) {
      const value = tryJson(line);
      if (isObject(value)) objects.push(value);
      else bad += 1;
    }
    if (objects.length && bad <= 1) {
      const answer = new Answer();
      for (const obj of objects) {
        answer.events += 1;
        if ('choices' in obj) answer.openai(obj);
        else answer.ollama(obj);
      }
      return { kind: 'ndjson', answer };
    }
    return { kind: 'text' };
  }

  function analyzeSse(text) {
    const events = [];
    let data = [];
    for (const line of text.split(/\r?\n|\r/)) {
      if (line === '') {
        if (data.length) events.push(data.join('\n'));
        data = [];
      } else if (line.startsWith('data:')) {
        data.push(line.slice(line.startsWith('data: ') ? 6 : 5));
      }
    }
    if (data.length) events.push(data.join('\n'));
    const answer = new Answer();
    for (const payload of events) {
      answer.events += 1;
      if (payload.trim() === '[DONE]') {
        answer.done = true;
        continue;
      }
      const value = tryJson(payload);
      if (value !== undefined) answer.openai(value);
    }
    return { kind: 'sse', answer };
  }

  function renderDetail(d) {
    const body = $('detail-body');
    // Keep what the reader did: scroll positions and open/closed sections.
    const memory = { scroll: body.scrollTop, open: {}, pre: {} };
    for (const node of body.querySelectorAll('details[data-key]')) memory.open[node.dataset.key] = node.open;
    for (const node of body.querySelectorAll('[data-scroll-key]')) {
      memory.pre[node.dataset.scrollKey] = {
        top: node.scrollTop,
        bottom: node.scrollTop + node.clientHeight >= node.scrollHeight - 4,
      };
    }

    const started = parseTime(d.started_at);
    setText('detail-title', `${d.method || ''} ${d.path || ''}`.trim() || 'Request');
    setText('detail-subtitle', started ? `${fmtFullDate(started)}` : d.started_at || '');

    const parts = [];
    parts.push(
      el(
        'div',
        { class: 'detail-badges' },
        statusBadge(d),
        stateBadge(d.state),
        streamPill(d),
        d.requested_model && d.routed_model && d.requested_model !== d.routed_model
          ? el('span', { class: 'pill pill-rewritten', text: 'rewritten' })
          : null,
        d.state === 'inflight' ? el('span', { class: 'muted small', text: 'still running — updating live' }) : null,
      ),
    );

    if (d.error) {
      parts.push(el('div', { class: 'notice notice-error', id: 'detail-error' }, el('strong', { text: 'Error: ' }), String(d.error)));
    }

    parts.push(fieldsList(d));
    parts.push(bodySection('Request body', 'detail-request-body', d.request_body, null));
    parts.push(...responseSections(d));
    parts.push(headersSection(d.request_headers));

    body.replaceChildren(...parts.filter(Boolean));

    for (const node of body.querySelectorAll('details[data-key]')) {
      if (node.dataset.key in memory.open) node.open = memory.open[node.dataset.key];
    }
    for (const node of body.querySelectorAll('[data-scroll-key]')) {
      const saved = memory.pre[node.dataset.scrollKey];
      if (saved) node.scrollTop = saved.bottom && d.state === 'inflight' ? node.scrollHeight : saved.top;
    }
    body.scrollTop = memory.scroll;
  }

  function fieldsList(d) {
    const started = parseTime(d.started_at);
    const wide = true;
    const rows = [
      ['ID', el('code', { class: 'mono', text: d.id == null ? '—' : String(d.id) }), wide],
      ['Started', started ? `${fmtFullDate(started)} (${d.started_at})` : d.started_at || '—', wide],
      ['Path', el('span', { class: 'mono', text: d.path || '—' }), wide],
      ['Upstream', el('span', { class: 'mono', text: d.upstream || '—' }), wide],
      ['Method', d.method || '—'],
      ['Service', d.service || '—'],
      ['Status', d.status != null ? String(d.status) : '—'],
      ['State', d.state || '—'],
      ['Requested model', d.requested_model || '—'],
      ['Routed model', d.routed_model || '—'],
      ['Streamed', d.stream ? 'yes' : 'no'],
      ['Duration', d.state === 'inflight' ? el('span', { class: 'live-elapsed', 'data-id': String(d.id), text: 'running' }) : fmtDuration(d.duration_ms)],
      ['Request size', d.request_bytes != null ? `${fmtBytes(d.request_bytes)} (${fmtInt(d.request_bytes)} B)` : '—'],
      ['Response size', d.response_bytes != null ? `${fmtBytes(d.response_bytes)} (${fmtInt(d.response_bytes)} B)` : '—'],
    ];
    return el(
      'dl',
      { class: 'fields', id: 'detail-fields' },
      rows.map(([name, value, isWide]) => el('div', { class: isWide ? 'pair pair-wide' : 'pair' }, el('dt', { text: name }), el('dd', null, value))),
    );
  }

  function headersSection(headers) {
    let pairs = [];
    if (Array.isArray(headers)) pairs = headers.filter((h) => Array.isArray(h) && h.length >= 2);
    else if (isObject(headers)) pairs = Object.entries(headers);
    const details = el('details', { class: 'section', 'data-key': 'headers', open: true });
    details.appendChild(el('summary', null, el('h3', { text: 'Request headers' }), el('span', { class: 'count-pill', text: String(pairs.length) })));
    if (!pairs.length) {
      details.appendChild(el('p', { class: 'muted', text: 'No headers recorded.' }));
      return details;
    }
    const table = el(
      'table',
      { class: 'headers-table', id: 'detail-headers' },
      el(
        'tbody',
        null,
        pairs.map(([name, value]) => {
          const text = value == null ? '' : String(value);
          return el(
            'tr',
            null,
            el('th', { scope: 'row', class: 'mono', text: String(name) }),
            el('td', { class: `mono${text === '[redacted]' ? ' redacted' : ''}`, text }),
          );
        }),
      ),
    );
    details.appendChild(table);
    return details;
  }

  /** A <pre> holding a body: pretty JSON when it parses, the truncation marker set apart. */
  function bodyPre(id, raw, scrollKey, pretty) {
    const { text, marker } = splitTruncation(raw);
    let shown = text;
    if (pretty !== false) {
      const value = tryJson(text);
      if (value !== undefined) shown = JSON.stringify(value, null, 2);
    }
    const pre = el('pre', { class: 'body', id, 'data-scroll-key': scrollKey || id });
    pre.appendChild(document.createTextNode(shown));
    if (marker) pre.appendChild(el('span', { class: 'trunc-marker', text: `\n${marker}` }));
    if (!shown && !marker) pre.classList.add('body-empty');
    return pre;
  }

  const utf8Length = (text) => new TextEncoder().encode(text).length;

  function truncationNotice(raw) {
    const { text, marker, total } = splitTruncation(raw);
    if (!marker) return null;
    return el('p', {
      class: 'notice notice-warn trunc-notice',
      text: `Truncated: the log kept the first ${fmtBytes(utf8Length(text))} of ${fmtBytes(total)} (${fmtInt(total)} bytes).`,
    });
  }

  function bodySection(title, id, raw) {
    const text = raw == null ? '' : String(raw);
    const section = el('section', { class: 'section' }, el('h3', { text: title }));
    add(section, [truncationNotice(text), bodyPre(id, text)]);
    if (!splitTruncation(text).text.trim()) section.appendChild(el('p', { class: 'muted small', text: '(empty body)' }));
    return section;
  }

  function responseSections(d) {
    const raw = d.response_body == null ? '' : String(d.response_body);
    const { text, marker } = splitTruncation(raw);
    const analysis = analyzeResponse(text, d);
    const sections = [];
    const stream = analysis.kind === 'sse' || analysis.kind === 'ndjson';

    if (analysis.answer && (stream || !analysis.answer.empty)) {
      sections.push(answerSection(analysis, Boolean(marker), d));
    }

    const section = el('section', { class: 'section' }, el('h3', { text: 'Response body' }));
    add(section, truncationNotice(raw));
    if (stream) {
      const label = analysis.kind === 'sse' ? 'Raw stream (SSE)' : 'Raw stream (NDJSON)';
      const details = el(
        'details',
        { class: 'raw-stream', 'data-key': 'raw-stream' },
        el('summary', null, `${label} · ${fmtInt(analysis.answer.events)} events · ${fmtBytes(utf8Length(text))}`),
        bodyPre('detail-response-body', raw, 'detail-response-body', false),
      );
      section.appendChild(details);
    } else {
      section.appendChild(bodyPre('detail-response-body', raw, 'detail-response-body', true));
      if (analysis.kind === 'empty' && !marker) {
        section.appendChild(el('p', { class: 'muted small', text: d.state === 'inflight' ? '(nothing received yet)' : '(empty body)' }));
      }
    }
    sections.push(section);
    return sections;
  }

  function answerSection(analysis, truncated, d) {
    const answer = analysis.answer;
    const stream = analysis.kind === 'sse' || analysis.kind === 'ndjson';
    const section = el('section', { class: 'section section-answer' });
    const meta = [];
    if (stream) meta.push(`assembled from ${fmtInt(answer.events)} ${analysis.kind === 'sse' ? 'SSE' : 'NDJSON'} events`);
    const finishes = [...new Set(answer.finish.values())];
    if (finishes.length) meta.push(`finish: ${finishes.join(', ')}`);
    if (stream && d.state !== 'inflight') {
      if (analysis.kind === 'sse') meta.push(answer.done ? '[DONE] received' : 'no [DONE]');
      else meta.push(answer.done ? 'done' : 'no final "done" line');
    }
    if (truncated) meta.push('incomplete: body truncated');
    section.appendChild(el('h3', null, 'Answer', meta.length ? el('span', { class: 'h3-meta', text: meta.join(' · ') }) : null));

    const box = el('div', { class: 'answer', id: 'detail-answer', 'data-scroll-key': 'detail-answer' });
    const indexes = [...answer.choices.keys()].sort((a, b) => a - b);
    if (indexes.length > 1) {
      for (const index of indexes) {
        box.appendChild(
          el('div', { class: 'choice' }, el('div', { class: 'choice-label', text: `Choice ${index}` }), el('div', { class: 'choice-text', text: answer.choices.get(index) })),
        );
      }
    } else if (indexes.length === 1) {
      box.textContent = answer.choices.get(indexes[0]);
    }
    section.appendChild(box);
    if (!indexes.length) {
      box.classList.add('answer-empty');
      section.appendChild(
        el('p', { class: 'muted small', text: d.state === 'inflight' ? 'No answer text yet.' : 'No answer text in this response.' }),
      );
    }
    if (answer.tools.size) {
      const list = el('ul', { class: 'tool-calls' });
      for (const call of answer.tools.values()) {
        let args = call.args;
        const parsed = tryJson(args);
        if (parsed !== undefined) args = JSON.stringify(parsed, null, 2);
        list.appendChild(
          el('li', null, el('span', { class: 'tool-name mono', text: `${call.name || '(unnamed tool)'}(…)` }), el('pre', { class: 'body body-small', text: args })),
        );
      }
      section.appendChild(el('h4', { text: 'Tool calls' }));
      section.appendChild(list);
    }
    for (const message of answer.errors) {
      section.appendChild(el('p', { class: 'notice notice-error' }, el('strong', { text: 'Error in response: ' }), message));
    }
    return section;
  }

  // ---------------------------------------------------------------- wiring

  const statsPoller = new Poller('stats', STATS_MS, pollStats);
  const inflightPoller = new Poller('inflight', INFLIGHT_MS, pollInflight);
  const logsPoller = new Poller('logs', LOGS_MS, pollLogs);
  const pollers = [statsPoller, inflightPoller, logsPoller];

  function onHashChange() {
    const id = hashLogId();
    if (id && id !== state.detailId) openDetail(id);
    else if (!id && state.detailId) closeDetail();
  }

  function init() {
    readUrl();
    fillFilterInputs();

    for (const key of FILTER_KEYS) {
      const input = $(`filter-${key}`);
      input.addEventListener(input.tagName === 'SELECT' ? 'change' : 'input', onFilterInput);
    }
    $('filters').addEventListener('submit', (ev) => {
      ev.preventDefault();
      if (readFilterInputs()) filtersChanged();
    });
    $('filter-clear').addEventListener('click', clearFilters);

    $('page-prev').addEventListener('click', () => {
      if (state.page <= 1) return;
      state.page -= 1;
      state.freshOk = false;
      writeUrl();
      restartLogs();
    });
    $('page-next').addEventListener('click', () => {
      state.page += 1;
      state.freshOk = false;
      writeUrl();
      restartLogs();
    });

    $('detail-close').addEventListener('click', closeDetail);
    $('detail-backdrop').addEventListener('click', closeDetail);
    document.addEventListener('keydown', (ev) => {
      if (ev.key === 'Escape' && state.detailId) {
        ev.preventDefault();
        closeDetail();
      }
    });
    window.addEventListener('hashchange', onHashChange);

    document.addEventListener('visibilitychange', () => {
      if (document.visibilityState === 'hidden') {
        for (const p of pollers) p.stop();
      } else {
        for (const p of pollers) p.run();
      }
      renderLive();
    });

    setInterval(tick, 200);

    const id = hashLogId();
    if (id) openDetail(id);
    for (const p of pollers) p.run();
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', init);
  else init();
})();
