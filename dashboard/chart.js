// Latency and time to first token over time, one colour per routed model, drawn as SVG.

import { $, clock, el, ms, unchanged } from './format.js';

const SVG = 'http://www.w3.org/2000/svg';
const HEIGHT = 180;
const PAD = { left: 64, right: 12, top: 12, bottom: 24 };
// 3:1 or more against white; the legend names each colour, so hue is not the only clue.
const COLORS = ['#0969da', '#bc4c00', '#1a7f37', '#8250df', '#cf222e', '#1b7c83', '#7d4e00', '#57606a'];
const box = $('chart');
let lastRows = [];

function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  node.append(...children);
  return node;
}

/** The next 1, 2 or 5 × 10^n: the top of the scale gets a round label. */
function roundUp(value) {
  const step = 10 ** Math.floor(Math.log10(value));
  return [1, 2, 5, 10].map((m) => m * step).find((top) => top >= value);
}

export function drawChart(rows) {
  lastRows = rows;
  // Drawn at the box's own width, so that text keeps its size instead of scaling with the picture.
  const width = box.clientWidth;
  if (unchanged(box, [width, rows])) return;
  const points = rows
    .map((r) => ({
      t: Date.parse(r.started_at),
      model: r.routed_model,
      latency: r.duration_ms,
      ttft: r.first_token_ms,
    }))
    .filter((p) => p.model && !Number.isNaN(p.t) && (p.latency != null || p.ttft != null));
  const legend = $('chart-legend');
  if (!points.length) {
    box.replaceChildren(el('p', { class: 'muted' }, 'Nothing finished to chart yet.'));
    legend.replaceChildren();
    return;
  }
  const t0 = Math.min(...points.map((p) => p.t));
  const t1 = Math.max(...points.map((p) => p.t));
  const top = roundUp(Math.max(1, ...points.flatMap((p) => [p.latency ?? 0, p.ttft ?? 0])));
  const x = (t) => PAD.left + (t1 === t0 ? 0.5 : (t - t0) / (t1 - t0)) * (width - PAD.left - PAD.right);
  const y = (v) => HEIGHT - PAD.bottom - (v / top) * (HEIGHT - PAD.top - PAD.bottom);
  const text = (attrs, content) => svg('text', attrs, content);

  const axes = [0, top / 2, top].map((v) =>
    svg(
      'g',
      { class: 'axis' },
      svg('line', { x1: PAD.left, x2: width - PAD.right, y1: y(v), y2: y(v) }),
      text({ x: PAD.left - 6, y: y(v) + 4, 'text-anchor': 'end' }, ms(v)),
    ),
  );
  const times = [
    text({ x: PAD.left, y: HEIGHT - 6 }, clock(t0)),
    text({ x: width - PAD.right, y: HEIGHT - 6, 'text-anchor': 'end' }, clock(t1)),
  ];
  const models = [...new Set(points.map((p) => p.model))].sort();
  const series = models.flatMap((model, i) => {
    const color = COLORS[i % COLORS.length];
    const mine = points.filter((p) => p.model === model).sort((a, b) => a.t - b.t);
    return [
      ['latency', 'latency', color, 'none'],
      ['ttft', 'first token', 'white', '4 3'],
    ].map(([metric, name, fill, dashes]) => {
      const shown = mine.filter((p) => p[metric] != null);
      const line = shown.map((p) => `${x(p.t)},${y(p[metric])}`).join(' ');
      const dots = shown.map((p) =>
        svg(
          'circle',
          { cx: x(p.t), cy: y(p[metric]), r: 3.5, stroke: color, fill },
          svg('title', {}, `${model} at ${clock(p.t)}: ${name} ${ms(p[metric])}`),
        ),
      );
      return svg(
        'g',
        { class: 'series' },
        svg('polyline', { points: line, stroke: color, fill: 'none', 'stroke-dasharray': dashes }),
        ...dots,
      );
    });
  });

  const label = `Latency of the last ${points.length} requests by routed model`;
  box.replaceChildren(
    svg('svg', { width, height: HEIGHT, role: 'img', 'aria-label': label }, ...axes, ...times, ...series),
  );
  legend.replaceChildren(
    ...models.map((model, i) => {
      const swatch = el('span', { class: 'swatch' });
      swatch.style.background = COLORS[i % COLORS.length];
      return el('li', {}, swatch, model);
    }),
    el('li', { class: 'muted' }, 'filled dots, solid line: latency · open dots, dashed line: time to first token'),
  );
}

new ResizeObserver(() => drawChart(lastRows)).observe(box);
