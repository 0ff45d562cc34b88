// The fleet at a glance: per group, the queue depth and the throughput over the last
// hour. GET /v1/stats is a snapshot, so this page samples it every few seconds and keeps
// the samples in the browser (localStorage, an hour's worth): the charts fill in while
// a console is open, and survive a reload, but show nothing from before it was first
// opened. The hour's total of finished jobs comes from the API and is always complete.
import { api, el, start, every } from './common.js';
import { lineChart } from './chart.js';

const KEY = 'fleet.console.samples';
const HOUR = 3600 * 1000;
const SAMPLE_MS = 5000;

start(async (who, main) => {
  const grid = el('div', { class: 'grid', id: 'fleet-groups' });
  main.replaceChildren(el('h1', {}, 'Fleet'),
    el('p', { class: 'muted' }, `Sampled every ${SAMPLE_MS / 1000} s while this page is open; the last hour's samples are kept in this browser.`),
    grid);
  every(SAMPLE_MS, async () => {
    const stats = await api('/v1/stats');
    const samples = remember(stats);
    grid.replaceChildren(...stats.groups.map((g) => card(g, samples)));
  });
});

function remember(stats) {
  let samples = [];
  try { samples = JSON.parse(localStorage.getItem(KEY) ?? '[]'); } catch { samples = []; }
  const t = Date.parse(stats.at) || Date.now();
  const groups = {};
  for (const g of stats.groups) {
    const m = g.finished.last_minute;
    groups[g.group] = { ready: g.tasks.ready, done: m.succeeded + m.failed + m.cancelled };
  }
  samples.push({ t, groups });
  samples = samples.filter((s) => s.t > Date.now() - HOUR);
  try { localStorage.setItem(KEY, JSON.stringify(samples)); } catch { /* full: keep in memory */ }
  return samples;
}

function card(g, samples) {
  const series = (f) => samples.filter((s) => s.groups[g.group]).map((s) => ({ t: s.t, v: f(s.groups[g.group]) }));
  const h = g.finished.last_hour;
  const fig = (v, label) => el('div', {}, el('b', {}, v ?? '—'), el('span', {}, label));
  return el('section', { class: 'card', 'data-group': g.group },
    el('h2', {}, g.group),
    el('div', { class: 'figures' },
      fig(g.tasks.ready, 'ready'), fig(g.tasks.held, 'held'), fig(g.tasks.waiting, 'waiting'),
      fig(g.tasks.running, 'running'),
      fig(g.tasks.oldest_ready_secs == null ? null : `${Math.round(g.tasks.oldest_ready_secs)} s`, 'oldest ready'),
      fig(`${g.slots.free}/${g.slots.total}`, 'slots free'),
      fig(`${g.executors.alive}${g.executors.draining ? ` (${g.executors.draining} draining)` : ''}`, 'executors'),
      fig(h.succeeded + h.failed + h.cancelled, 'jobs finished, last hour')),
    el('h3', {}, 'Queue depth (ready tasks)'),
    lineChart(series((s) => s.ready), { label: 'ready tasks' }),
    el('h3', {}, 'Throughput (jobs finished per minute)'),
    lineChart(series((s) => s.done), { label: 'jobs finished per minute', unit: 'per minute' }));
}
