// The fleet at a glance: per group, the queue depth and the throughput over the last
// hour. The collector samples the figures of GET /v1/stats every `metrics.history_secs`
// (60 s by default) and keeps them (GET /v1/stats/history), so the charts show the whole
// hour as soon as the page opens; the current snapshot, read every few seconds, is the
// last point.
import { api, el, start, every } from './common.js';
import { lineChart } from './chart.js';

const REFRESH_MS = 5000;

start(async (who, main) => {
  const grid = el('div', { class: 'grid', id: 'fleet-groups' });
  const note = el('p', { class: 'muted' }, 'The last hour, as the collector sampled it.');
  main.replaceChildren(el('h1', {}, 'Fleet'), note, grid);
  every(REFRESH_MS, async () => {
    const [stats, history] = await Promise.all([api('/v1/stats'), api('/v1/stats/history?minutes=60')]);
    note.textContent = `The last hour, sampled by the collector every ${history.step_secs} s; the last point is now.`;
    const past = new Map(history.groups.map((g) => [g.group, g.points]));
    grid.replaceChildren(...stats.groups.map((g) => card(g, points(past.get(g.group) ?? [], g, stats.at))));
  });
});

// The samples of one group, then the snapshot read now.
function points(samples, g, at) {
  const m = g.finished.last_minute;
  return [
    ...samples.map((p) => ({ t: Date.parse(p.at), ready: p.ready, done: p.jobs_finished_last_minute })),
    { t: Date.parse(at) || Date.now(), ready: g.tasks.ready, done: m.succeeded + m.failed + m.cancelled },
  ];
}

function card(g, samples) {
  const series = (f) => samples.map((s) => ({ t: s.t, v: f(s) }));
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
