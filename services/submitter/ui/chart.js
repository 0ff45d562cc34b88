// A small line chart in SVG: values over the last hour, oldest on the left.
import { el } from './common.js';

const W = 400;
const H = 120;
const PAD = { left: 34, right: 8, top: 10, bottom: 18 };
const HOUR = 3600 * 1000;

/** `points`: [{t: ms since epoch, v: number}], drawn from now - 1 h to now. */
export function lineChart(points, { label, unit = '' } = {}) {
  const now = Date.now();
  const max = Math.max(1, ...points.map((p) => p.v));
  const x = (t) => PAD.left + ((t - (now - HOUR)) / HOUR) * (W - PAD.left - PAD.right);
  const y = (v) => H - PAD.bottom - (v / max) * (H - PAD.top - PAD.bottom);
  const s = { svg: true };
  const parts = [
    el('line', { ...s, class: 'axis', x1: PAD.left, y1: H - PAD.bottom, x2: W - PAD.right, y2: H - PAD.bottom }),
    el('line', { ...s, class: 'axis', x1: PAD.left, y1: PAD.top, x2: PAD.left, y2: H - PAD.bottom }),
    el('text', { ...s, x: PAD.left - 4, y: PAD.top + 8, 'text-anchor': 'end' }, fmt(max)),
    el('text', { ...s, x: PAD.left - 4, y: H - PAD.bottom, 'text-anchor': 'end' }, '0'),
    el('text', { ...s, x: PAD.left, y: H - 4 }, '-60 min'),
    el('text', { ...s, x: (W + PAD.left) / 2, y: H - 4, 'text-anchor': 'middle' }, '-30 min'),
    el('text', { ...s, x: W - PAD.right, y: H - 4, 'text-anchor': 'end' }, 'now'),
  ];
  if (points.length > 0) {
    const xy = points.map((p) => `${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`);
    const base = H - PAD.bottom;
    parts.push(el('polygon', { ...s, class: 'area',
      points: `${x(points[0].t).toFixed(1)},${base} ${xy.join(' ')} ${x(points[points.length - 1].t).toFixed(1)},${base}` }));
    parts.push(el('polyline', { ...s, class: 'line', points: xy.join(' ') }));
    // The latest sample as a dot: with one sample the line alone would not show.
    const last = points[points.length - 1];
    parts.push(el('circle', { ...s, class: 'dot', cx: x(last.t).toFixed(1), cy: y(last.v).toFixed(1), r: 3 },
      el('title', { ...s }, `${fmt(last.v)}${unit ? ` ${unit}` : ''} now`)));
  }
  return el('svg', { class: 'chart', viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: 'none',
    role: 'img', 'data-points': points.length, 'aria-label': `${label}${unit ? ` (${unit})` : ''}` }, parts);
}

function fmt(v) {
  return Number.isInteger(v) ? String(v) : v.toFixed(1);
}
