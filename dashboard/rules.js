// The Rules panel: the rules in force, why a name goes where it goes, and names no rule matched.
// The routes are newer than some proxies: a 404 shows a quiet "not available".

import { ApiError, api } from './api.js';
import { $, DASH, el, int, unchanged, when } from './format.js';

function unavailable(error) {
  return el('p', { class: 'muted' }, error.status === 404 ? 'Not available on this proxy.' : error.message);
}

/** Sets and lists from the rules, as one line of text. */
function show(value) {
  if (value == null || value === '' || (typeof value === 'object' && !Object.keys(value).length)) return DASH;
  if (Array.isArray(value)) return value.join(', ');
  if (typeof value === 'object')
    return Object.entries(value)
      .map(([k, v]) => `${k}=${JSON.stringify(v)}`)
      .join(', ');
  return String(value);
}

function rulesView(data) {
  const origin = data.source === 'file' ? `file ${data.path}` : 'MODEL_MAP (environment)';
  const rows = (data.rules || []).map((rule) => {
    const values = [rule.key, rule.kind, show(rule.target), show(rule.set), show(rule.drop), int(rule.hits)];
    return el(
      'tr',
      {},
      values.map((value) => el('td', {}, value)),
    );
  });
  const head = ['Rule', 'Kind', 'Target', 'Sets', 'Drops', 'Hits'].map((name) => el('th', { scope: 'col' }, name));
  return [
    el('p', { class: 'muted' }, `From ${origin}, loaded ${when(data.loaded_at)}`),
    data.error && el('p', { class: 'tag bad' }, `Error: ${data.error}`),
    rows.length
      ? el(
          'div',
          { class: 'scroll' },
          el('table', { id: 'rules-table' }, el('thead', {}, el('tr', {}, head)), el('tbody', {}, rows)),
        )
      : el('p', { class: 'muted' }, 'No rules: every model name is sent unchanged.'),
  ];
}

async function copy(code, button) {
  try {
    await navigator.clipboard.writeText(code.textContent);
    button.textContent = 'Copied';
  } catch {
    // No clipboard outside secure contexts: select the line for the reader to copy.
    getSelection().selectAllChildren(code);
    button.textContent = 'Selected: press Ctrl+C';
  }
}

function unmatchedView(data) {
  const entries = data.unmatched || [];
  if (!entries.length) return [el('p', { class: 'muted' }, 'Every model name asked for matched a rule.')];
  return [
    el(
      'ul',
      { id: 'unmatched' },
      entries.map((entry) => {
        const line = el('code', {}, `${JSON.stringify(entry.model)}: "your-model"`);
        const button = el('button', { type: 'button' }, 'Copy');
        button.addEventListener('click', () => copy(line, button));
        const seen = `asked ${int(entry.count)} times, last ${when(entry.last_seen)}`;
        return el(
          'li',
          {},
          el('b', {}, entry.model),
          ' ',
          el('span', { class: 'muted' }, seen),
          entry.rejected > 0 && el('span', { class: 'tag warn' }, 'rejected by the server'),
          el('div', {}, line, ' ', button),
        );
      }),
    ),
  ];
}

const absent = new Set(); // routes that answered 404, asked again only after a reload

async function unlessAbsent(path) {
  if (absent.has(path)) throw new ApiError(404, 'not available');
  try {
    return await api(path);
  } catch (error) {
    if (error.status === 404) absent.add(path);
    throw error;
  }
}

export async function refreshRules() {
  const [rules, unmatched] = await Promise.allSettled([unlessAbsent('/api/rules'), unlessAbsent('/api/unmatched')]);
  for (const [box, result, view] of [
    [$('rules-list'), rules, rulesView],
    [$('unmatched-list'), unmatched, unmatchedView],
  ]) {
    const data =
      result.status === 'fulfilled' ? result.value : { error: result.reason.message, status: result.reason.status };
    if (unchanged(box, data)) continue;
    box.replaceChildren(...(result.status === 'fulfilled' ? view(result.value) : [unavailable(result.reason)]));
  }
}

function verdict(answer) {
  const name = JSON.stringify(answer.model);
  if (!answer.rule) return [`${name} matches no rule: it is sent as ${JSON.stringify(answer.routed)}.`];
  return [
    `${name} → ${JSON.stringify(answer.routed)} by the ${answer.rule.kind} rule ${answer.rule.key}.`,
    answer.groups?.length && ` Groups: ${answer.groups.join(', ')}.`,
    show(answer.set) !== DASH && ` Sets ${show(answer.set)}.`,
    show(answer.drop) !== DASH && ` Drops ${show(answer.drop)}.`,
    answer.shadowed?.length && ` Also matched, but come later: ${answer.shadowed.join(', ')}.`,
  ];
}

$('explain').addEventListener('submit', async (event) => {
  event.preventDefault();
  const out = $('explain-result');
  try {
    out.replaceChildren(...verdict(await api('/api/explain', { model: $('explain-model').value })).filter(Boolean));
  } catch (error) {
    out.replaceChildren(unavailable(error));
  }
});
