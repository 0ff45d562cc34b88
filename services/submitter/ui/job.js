// One job: its state and controls, every task with its attempts (and, for an `each`
// task, each member's copy and result), and the live output of one task. Refreshed on
// each of the job's events (GET /v1/events, followed) and every few seconds besides.
import { api, el, start, badge, when, toast, mayControl, every } from './common.js';

const FINISHED = ['succeeded', 'failed', 'cancelled'];
const id = decodeURIComponent(location.pathname.split('/').pop());

start(async (who, main) => {
  const head = el('section', { id: 'job-head' });
  const controls = el('div', { id: 'controls', class: 'controls' });
  const tasks = el('section', { id: 'tasks' });
  const outTitle = el('h2', {}, 'Output');
  const outState = el('span', { class: 'muted', id: 'output-state' });
  const output = el('pre', { class: 'output', id: 'output' });
  main.replaceChildren(head, controls, tasks, el('section', { class: 'card' }, outTitle, outState, output));

  let job = null;
  let followed = null; // { index, attempts, ended, source }

  async function refresh() {
    job = await api(`/v1/jobs/${encodeURIComponent(id)}`);
    const results = await api(`/v1/jobs/${encodeURIComponent(id)}/results`).catch(() => ({ results: [] }));
    renderHead(head, job);
    renderControls(controls, job, who, act);
    tasks.replaceChildren(el('h2', {}, `Tasks (${job.tasks.length})`),
      ...job.tasks.map((t) => taskCard(t, results.results.filter((r) => r.task_id === t.task_id), follow)));
    const t = followed ? job.tasks[followed.index] : pick(job);
    if (!followed || (followed.ended && t.attempts > followed.attempts)) follow(t);
  }

  /** Follows a task's live output (the latest attempt) until its `end` event. */
  function follow(t) {
    followed?.source.close();
    output.replaceChildren();
    outTitle.textContent = `Output of ${t.name}`;
    outState.textContent = 'following…';
    const source = new EventSource(
      `/v1/jobs/${encodeURIComponent(id)}/tasks/${t.index}/logs?follow=true`);
    followed = { index: t.index, attempts: t.attempts, ended: false, source };
    source.addEventListener('chunk', (e) => {
      const c = JSON.parse(e.data);
      const stick = output.scrollTop + output.clientHeight >= output.scrollHeight - 4;
      output.append(c.stream === 'stderr' ? el('span', { class: 'stderr' }, c.data) : c.data);
      if (stick) output.scrollTop = output.scrollHeight;
    });
    source.addEventListener('end', () => {
      source.close();
      if (followed?.source === source) {
        followed.ended = true;
        outState.textContent = output.textContent ? 'ended' : 'ended without output';
      }
    });
    source.onerror = () => {
      if (source.readyState === EventSource.CLOSED && followed?.source === source && !followed.ended) {
        followed.ended = true;
        outState.textContent = 'no output (not started)';
      }
    };
  }

  async function act(label, path, method, body) {
    try {
      await api(path, { method, body });
      toast(`${label}: done`);
    } catch (e) {
      toast(`${label}: ${e.message}`, true);
    }
    await refresh().catch(() => {});
  }

  // The job's events say when to look again; the timer covers a dropped stream.
  const kinds = ['job.accepted', 'job.succeeded', 'job.failed', 'job.cancelled',
    'task.assigned', 'task.started', 'task.finished', 'task.retrying'];
  const events = new EventSource(`/v1/events?job=${encodeURIComponent(id)}&follow=true&from=now`);
  let soon = null;
  const later = () => { clearTimeout(soon); soon = setTimeout(() => refresh().catch(() => {}), 150); };
  for (const k of kinds) events.addEventListener(k, later);
  await refresh();
  every(4000, async () => { if (!FINISHED.includes(job?.state)) await refresh(); });
});

/** The task worth watching: one running, else one not finished, else the first. */
function pick(job) {
  return job.tasks.find((t) => ['running', 'assigned', 'unknown'].includes(t.state))
    ?? job.tasks.find((t) => !FINISHED.includes(t.state))
    ?? job.tasks[0];
}

function renderHead(head, job) {
  const c = job.counts ?? {};
  head.replaceChildren(
    el('h1', {}, job.name ?? 'Job', ' ', badge(job.state), job.held ? [' ', badge('held')] : null),
    el('dl', { class: 'facts card' },
      el('dt', {}, 'Id'), el('dd', { class: 'mono' }, job.job_id),
      el('dt', {}, 'Submitted by'), el('dd', {}, job.submitted_by?.name ?? '—'),
      el('dt', {}, 'Created'), el('dd', {}, when(job.created_at)),
      el('dt', {}, 'Finished'), el('dd', {}, when(job.finished_at)),
      el('dt', {}, 'Tasks'), el('dd', {},
        `${c.total ?? job.tasks.length} in all, ${c.done ?? 0} done: ${c.succeeded ?? 0} succeeded, ${c.failed ?? 0} failed, ${c.cancelled ?? 0} cancelled`)));
}

/** Buttons for what the caller's role allows on this job, and nothing for a reader. */
function renderControls(box, job, who, act) {
  if (!mayControl(job, who)) {
    box.replaceChildren(el('span', { class: 'muted', id: 'read-only' },
      `Read only: a ${who.role} token may not change this job.`));
    return;
  }
  const path = `/v1/jobs/${encodeURIComponent(job.job_id)}`;
  const items = [];
  if (!FINISHED.includes(job.state)) {
    items.push(el('button', { type: 'button', class: 'danger', id: 'btn-cancel',
      onclick: () => act('Cancel', `${path}/cancel`, 'POST') }, 'Cancel'));
    items.push(job.held
      ? el('button', { type: 'button', id: 'btn-release',
        onclick: () => act('Release', path, 'PATCH', { held: false }) }, 'Release')
      : el('button', { type: 'button', class: 'quiet', id: 'btn-hold',
        onclick: () => act('Hold', path, 'PATCH', { held: true }) }, 'Hold'));
    const prio = el('input', { type: 'number', min: -1000, max: 1000, id: 'priority',
      value: job.tasks[0]?.spec?.priority ?? 0, title: 'priority of the tasks not handed out yet' });
    items.push(el('label', { class: 'muted' }, 'Priority '), prio,
      el('button', { type: 'button', class: 'quiet', id: 'btn-priority',
        onclick: () => act('Priority', path, 'PATCH', { priority: Number(prio.value) }) }, 'Set'));
  } else if (job.state !== 'succeeded') {
    items.push(el('button', { type: 'button', id: 'btn-retry',
      onclick: () => act('Retry', `${path}/retry`, 'POST') }, 'Retry failed and cancelled tasks'));
  }
  // Leave a priority being typed alone while the page refreshes (unless it finished).
  const typing = document.activeElement?.tagName === 'INPUT' && box.contains(document.activeElement);
  if (typing && !FINISHED.includes(job.state)) return;
  box.replaceChildren(...items);
}

function taskCard(t, results, follow) {
  const out = el('button', { type: 'button', class: 'quiet', 'data-follow': t.index,
    onclick: () => follow(t) }, 'Output');
  const attempts = (t.history ?? []).length ? el('table', {},
    el('thead', {}, el('tr', {}, ['Attempt', 'Executor', 'State', 'Assigned', 'Started', 'Finished'].map((h) => el('th', {}, h)))),
    el('tbody', {}, t.history.map((a) => el('tr', {},
      el('td', {}, a.attempt, a.late_result ? ' (late result)' : ''),
      el('td', {}, a.executor_id ?? '—'), el('td', {}, badge(a.state)),
      el('td', {}, when(a.assigned_at)), el('td', {}, when(a.started_at)), el('td', {}, when(a.finished_at)))))) : null;
  const copies = t.each ? el('table', { class: 'members' },
    el('thead', {}, el('tr', {}, ['Member', 'State', 'Attempts', 'Exit', 'Output', 'Error'].map((h) => el('th', {}, h)))),
    el('tbody', {}, (t.copies ?? []).map((c) => {
      const r = results.find((x) => x.executor_id === c.executor_id);
      return el('tr', { 'data-member': c.executor_id },
        el('td', {}, c.executor_id), el('td', {}, badge(r?.outcome ?? c.state)),
        el('td', {}, c.attempts ?? '—'), el('td', {}, r ? exit(r) : '—'),
        el('td', {}, r ? streams(r) : '—'), el('td', {}, c.error ?? r?.error ?? ''));
    }))) : null;
  const result = !t.each && results[0] ? el('div', {}, el('span', { class: 'muted' }, `Result (attempt ${results[0].attempt} on ${results[0].executor_id}): exit ${exit(results[0])} `), streams(results[0])) : null;
  return el('article', { class: 'card task', 'data-task': t.index },
    el('header', {},
      el('b', {}, `#${t.index} ${t.name}`), badge(t.state),
      t.each ? el('span', { class: 'chip' }, `each${t.quorum ? `, quorum ${t.quorum}` : ''}`) : null,
      el('span', { class: 'muted' }, `attempts ${t.attempts}`),
      t.executor_id ? el('span', { class: 'muted' }, `on ${t.executor_id}`) : null,
      t.exit_code != null ? el('span', { class: 'muted' }, `exit ${t.exit_code}`) : null,
      el('code', { class: 'muted' }, (t.spec?.argv ?? []).join(' ')),
      out),
    t.error ? el('p', { class: t.state === 'succeeded' ? 'muted' : 'error' }, t.error) : null,
    t.hint ? el('p', { class: 'hint' }, `Waiting: ${t.hint}`) : null,
    t.retry_at ? el('p', { class: 'hint' }, `Next attempt at ${when(t.retry_at)}`) : null,
    attempts, copies, result);
}

function exit(r) {
  return r.signal ? `signal ${r.signal}` : (r.exit_code ?? r.outcome);
}

function streams(r) {
  return [
    r.stdout ? el('details', {}, el('summary', {}, `stdout${r.stdout_truncated ? ' (truncated)' : ''}`), el('pre', {}, r.stdout)) : null,
    r.stderr ? el('details', {}, el('summary', {}, `stderr${r.stderr_truncated ? ' (truncated)' : ''}`), el('pre', {}, r.stderr)) : null,
  ];
}
