// The jobs list: filters (state, group, name prefix) kept in the address, keyset pages
// through the API's cursor, refreshed every few seconds.
import { api, el, start, badge, when, shortId, every } from './common.js';

const STATES = ['', 'pending', 'running', 'succeeded', 'failed', 'cancelled'];
// Jobs per page: 25, or the address's `limit` (1 to 1000, as the API takes).
const PAGE = Math.min(1000, Math.max(1, Number(new URLSearchParams(location.search).get('limit')) || 25));

start(async (who, main) => {
  const q = new URLSearchParams(location.search);
  const state = el('select', { name: 'state', id: 'filter-state' },
    STATES.map((s) => el('option', { value: s, selected: q.get('state') === s }, s || 'any')));
  const group = el('input', { name: 'group', id: 'filter-group', placeholder: 'e.g. cpu', value: q.get('group') ?? '' });
  const name = el('input', { name: 'name_prefix', id: 'filter-name', placeholder: 'starts with…', value: q.get('name_prefix') ?? '' });
  const form = el('form', { class: 'filters', id: 'filters' },
    el('label', {}, 'State', state), el('label', {}, 'Group', group), el('label', {}, 'Name', name),
    el('button', { type: 'submit' }, 'Filter'),
    el('button', { type: 'button', class: 'quiet', onclick: () => { form.reset(); state.value = ''; group.value = ''; name.value = ''; apply(); } }, 'Clear'));
  const body = el('tbody', { id: 'jobs' });
  const table = el('table', {},
    el('thead', {}, el('tr', {}, ['Job', 'State', 'Tasks', 'Submitted by', 'Created', 'Finished'].map((h) => el('th', {}, h)))),
    body);
  const prev = el('button', { type: 'button', class: 'quiet', id: 'prev' }, '← Newer');
  const next = el('button', { type: 'button', class: 'quiet', id: 'next' }, 'Older →');
  const where = el('span', { class: 'muted' });
  main.replaceChildren(el('h1', {}, 'Jobs'), form, table, el('div', { class: 'pager' }, prev, next, where));

  // The cursors of the pages walked so far: pages[i] reads page i.
  let pages = [null];
  let nextCursor = null;

  function filters() {
    const p = new URLSearchParams();
    if (state.value) p.set('state', state.value);
    if (group.value.trim()) p.set('group', group.value.trim());
    if (name.value.trim()) p.set('name_prefix', name.value.trim());
    if (PAGE !== 25) p.set('limit', PAGE);
    return p;
  }

  async function load() {
    const p = filters();
    p.set('limit', PAGE);
    const cursor = pages[pages.length - 1];
    if (cursor) p.set('cursor', cursor);
    const page = await api(`/v1/jobs?${p}`);
    nextCursor = page.next_cursor;
    body.replaceChildren(...page.jobs.map(row));
    if (page.jobs.length === 0) body.append(el('tr', {}, el('td', { colspan: 6, class: 'muted' }, 'No jobs.')));
    prev.disabled = pages.length === 1;
    next.disabled = !nextCursor;
    where.textContent = `page ${pages.length}`;
  }

  function apply() {
    const p = filters();
    history.replaceState(null, '', p.toString() ? `?${p}` : location.pathname);
    pages = [null];
    load().catch(showError);
  }

  function showError(e) {
    body.replaceChildren(el('tr', {}, el('td', { colspan: 6, class: 'error' }, e.message)));
  }

  form.addEventListener('submit', (e) => { e.preventDefault(); apply(); });
  next.addEventListener('click', () => { if (nextCursor) { pages.push(nextCursor); load().catch(showError); } });
  prev.addEventListener('click', () => { if (pages.length > 1) { pages.pop(); load().catch(showError); } });
  every(3000, () => load().catch(showError));
});

function row(j) {
  const counts = Object.entries(j.tasks ?? {}).map(([s, n]) => `${n} ${s}`).join(' · ');
  return el('tr', { 'data-job-id': j.job_id },
    el('td', {}, el('a', { href: `/ui/jobs/${j.job_id}` }, j.name ?? shortId(j.job_id)),
      ' ', el('span', { class: 'muted mono' }, shortId(j.job_id))),
    el('td', {}, badge(j.state), j.held ? [' ', badge('held')] : null),
    el('td', {}, `${j.task_count}`, counts ? el('span', { class: 'muted' }, ` (${counts})`) : null),
    el('td', {}, j.submitted_by?.name ?? '—'),
    el('td', {}, when(j.created_at)),
    el('td', {}, when(j.finished_at)));
}
