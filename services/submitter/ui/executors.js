// The executors: groups, labels, slots in use, when each last sent INFO, and for an
// administrator drain and resume.
import { api, el, start, badge, ago, toast, every } from './common.js';

start(async (who, main) => {
  const body = el('tbody', { id: 'executors' });
  const admin = who.role === 'admin';
  main.replaceChildren(el('h1', {}, 'Executors'),
    el('table', {}, el('thead', {}, el('tr', {},
      ['Executor', 'Groups', 'Labels', 'Slots used', 'State', 'Last INFO', admin ? 'Control' : null]
        .filter((h) => h).map((h) => el('th', {}, h)))), body));

  async function load() {
    const view = await api('/v1/executors');
    body.replaceChildren(...view.executors.map((x) => row(x, admin, act)));
    if (view.executors.length === 0) body.append(el('tr', {}, el('td', { colspan: 7, class: 'muted' }, 'No executor has reported yet.')));
  }

  async function act(x, action) {
    try {
      await api(`/v1/executors/${encodeURIComponent(x.executor_id)}/${action}`, { method: 'POST' });
      toast(`${action} sent to ${x.executor_id}`);
    } catch (e) {
      toast(`${action} ${x.executor_id}: ${e.message}`, true);
    }
    await load().catch(() => {});
  }

  every(2000, load);
});

function row(x, admin, act) {
  const state = [badge(x.alive ? 'alive' : 'silent'), x.draining ? [' ', badge('draining')] : null];
  return el('tr', { 'data-executor': x.executor_id },
    el('td', {}, el('b', {}, x.executor_id)),
    el('td', {}, (x.groups ?? []).map((g) => el('span', { class: 'chip' }, g))),
    el('td', {}, Object.entries(x.labels ?? {}).map(([k, v]) => el('span', { class: 'chip' }, `${k}=${v}`))),
    el('td', {}, `${x.running} / ${x.capacity}`, x.queued ? el('span', { class: 'muted' }, ` (+${x.queued} queued)`) : null),
    el('td', {}, state),
    el('td', { title: x.last_info_at ?? '' }, ago(x.last_info_at)),
    admin ? el('td', {}, x.draining
      ? el('button', { type: 'button', 'data-action': 'resume', onclick: () => act(x, 'resume') }, 'Resume')
      : el('button', { type: 'button', class: 'quiet', 'data-action': 'drain', onclick: () => act(x, 'drain') }, 'Drain'))
      : null);
}
