// Builders and formatters. Everything logged is attacker-controlled, so the page is built
// from elements and text nodes only: no markup is ever parsed from data.

export const DASH = '—';
export const $ = (id) => document.getElementById(id);

/** An element; props are attributes except `text`. Null, false and undefined children are skipped. */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value == null || value === false) continue;
    if (key === 'text') node.textContent = String(value);
    else node.setAttribute(key, value === true ? '' : String(value));
  }
  node.append(...children.flat().filter((child) => child != null && child !== false));
  return node;
}

const drawn = new WeakMap();

/** True when `node` was last drawn from the same data: redrawing it would only lose focus and selection. */
export function unchanged(node, data) {
  const sig = JSON.stringify(data);
  if (drawn.get(node) === sig) return true;
  drawn.set(node, sig);
  return false;
}

const missing = (n) => n == null || n === '' || Number.isNaN(Number(n));

export const int = (n) => (missing(n) ? DASH : Number(n).toLocaleString());

export const rate = (n) => (missing(n) ? DASH : Number(n).toFixed(1));

export function ms(n) {
  if (missing(n)) return DASH;
  if (n < 1000) return `${Math.round(n)} ms`;
  if (n < 60000) return `${(n / 1000).toFixed(n < 10000 ? 2 : 1)} s`;
  return `${Math.floor(n / 60000)} min ${Math.floor((n % 60000) / 1000)} s`;
}

export function bytes(n) {
  if (missing(n)) return DASH;
  const units = ['B', 'KB', 'MB', 'GB'];
  let i = 0;
  for (; n >= 1024 && i < units.length - 1; i++) n /= 1024;
  return `${i ? n.toFixed(n < 10 ? 1 : 0) : n} ${units[i]}`;
}

export function clock(iso) {
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? iso || DASH : date.toLocaleTimeString([], { hour12: false });
}

export function when(iso) {
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? iso || DASH : date.toLocaleString([], { hour12: false });
}
