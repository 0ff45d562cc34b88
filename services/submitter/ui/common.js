// Shared by every page: the session, API calls (with the CSRF header on changes), small
// DOM helpers. Every page reads the public API with the session cookie, nothing else.

let me = null;

/** Who is signed in: {name, role, token_id, csrf}. Sends to the sign-in page if nobody. */
export async function session() {
  if (me) return me;
  const r = await fetch('/ui/session', { credentials: 'same-origin' });
  if (r.status === 401) {
    location.href = '/ui/signin';
    throw new Error('signed out');
  }
  if (!r.ok) throw new Error(`GET /ui/session: ${r.status}`);
  me = await r.json();
  return me;
}

/** Calls the API; resolves to the JSON body (null when there is none), rejects with the
 * API's error message. */
export async function api(path, { method = 'GET', body } = {}) {
  const headers = { Accept: 'application/json' };
  if (method !== 'GET') headers['X-Fleet-CSRF'] = (await session()).csrf;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const r = await fetch(path, {
    method, headers, credentials: 'same-origin',
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (r.status === 401) location.href = '/ui/signin';
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = { error: { message: text } }; }
  if (!r.ok) throw new Error(data?.error?.message ?? `${method} ${path}: ${r.status}`);
  return data;
}

/** An element with attributes (`on…` are listeners) and children (strings are text). */
export function el(tag, attrs = {}, ...children) {
  const e = tag === 'svg' || attrs.svg
    ? document.createElementNS('http://www.w3.org/2000/svg', tag)
    : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false || k === 'svg') continue;
    if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (k === 'class' && !(e instanceof SVGElement)) e.className = v;
    else e.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    e.append(c instanceof Node ? c : String(c));
  }
  return e;
}

export function badge(state, title) {
  return el('span', { class: `badge s-${state}`, title }, state);
}

export function when(iso) {
  return iso ? new Date(iso).toLocaleString() : '—';
}

export function ago(iso) {
  if (!iso) return 'never';
  const s = Math.max(0, (Date.now() - new Date(iso).getTime()) / 1000);
  if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  return `${Math.floor(s / 3600)} h ago`;
}

export function shortId(id) {
  return id ? id.slice(0, 8) : '—';
}

let toastTimer = null;
export function toast(msg, bad = false) {
  const t = document.getElementById('toast');
  t.textContent = msg;
  t.className = bad ? 'toast bad' : 'toast';
  t.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { t.hidden = true; }, bad ? 8000 : 3000);
}

/** Whether the signed-in caller may change `job` (as the API decides: admin, or the
 * submitter that submitted it). The server checks again; this only hides buttons. */
export function mayControl(job, who) {
  if (who.role === 'admin') return true;
  return who.role === 'submitter' && who.token_id != null
    && job.submitted_by?.token_id === who.token_id;
}

/** Runs `fn` now and every `ms` after each run ends (a slow API is not piled on). */
export function every(ms, fn) {
  const run = async () => {
    try { await fn(); } catch (e) { console.warn(e); }
    setTimeout(run, ms);
  };
  return run();
}

/** Sets up the header (who, sign out, the current page), then runs the page. */
export async function start(page) {
  const main = document.getElementById('main');
  const current = document.body.dataset.page;
  for (const a of document.querySelectorAll('[data-nav]')) {
    if (a.dataset.nav.split(' ').includes(current)) a.classList.add('active');
  }
  document.getElementById('signout').addEventListener('click', async () => {
    const who = await session();
    await fetch('/ui/session', {
      method: 'DELETE', credentials: 'same-origin', headers: { 'X-Fleet-CSRF': who.csrf ?? '' },
    });
    location.href = '/ui/signin';
  });
  try {
    const who = await session();
    document.getElementById('who').textContent = `${who.name} (${who.role})`;
    document.body.dataset.role = who.role;
    await page(who, main);
  } catch (e) {
    main.replaceChildren(el('p', { class: 'error' }, String(e.message ?? e)));
  }
}
