// tenant-router admin console: plain ES2020, no dependencies. Talks to the admin API on
// this origin with `Authorization: Bearer <token>`; the token lives in sessionStorage only.
// Every piece of server data reaches the page through textContent, never as HTML.
'use strict';

(() => {
  const TOKEN_KEY = 'tenant-router-admin-token';
  const PAGE_SIZE = 20;
  const JOBS_LIMIT = 50;
  const REFRESH_MS = 5000;
  const SEARCH_DELAY_MS = 300;

  const $ = (selector) => document.querySelector(selector);
  const fmt = (n) => (typeof n === 'number' ? n.toLocaleString() : '–');

  /** An element with attributes (`class`, `data`, others) and children (nodes or text). */
  function el(tag, props = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props)) {
      if (value == null || value === false) continue;
      if (key === 'class') node.className = value;
      else if (key === 'data') {
        for (const [k, v] of Object.entries(value)) if (v != null) node.dataset[k] = String(v);
      } else node.setAttribute(key, value === true ? '' : String(value));
    }
    for (const child of children) if (child != null) node.append(child);
    return node;
  }

  /** A row button; its accessible name adds what it acts on: "Suspend (acme)". */
  const button = (label, cls, subject) =>
    el('button', { type: 'button', class: `small ${cls}`, 'aria-label': `${label} (${subject})` }, label);
  const numCell = (n, cls = '') => el('td', { class: `num ${cls}`.trim() }, fmt(n));
  const emptyRow = (columns, text) =>
    el('tr', { class: 'empty' }, el('td', { colspan: columns }, text));

  let token = null;
  let signedIn = false;
  let refreshTimer = null;

  // ---- API -----------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, message, fields = [], quiet = false) {
      super(message);
      this.status = status;
      this.fields = fields; // problem+json `errors`: [{field, message}]
      this.quiet = quiet; // already dealt with (signed out): show nothing
    }
    get refused() { return this.status === 401 || this.status === 403; }
  }

  /** A problem+json body as one sentence: its detail, then each invalid field. */
  function problemText(problem, fallback) {
    if (!problem || typeof problem !== 'object') return fallback;
    let text = problem.detail || problem.title || fallback;
    if (Array.isArray(problem.errors) && problem.errors.length) {
      const fields = problem.errors.map((e) =>
        (e.field === 'body' ? e.message : `${e.field} ${e.message}`));
      text += `: ${fields.join('; ')}`;
    }
    return text;
  }

  async function api(method, path, { body, headers = {} } = {}) {
    const sent = token;
    const init = {
      method,
      cache: 'no-store',
      headers: { Accept: 'application/json', Authorization: `Bearer ${sent}`, ...headers },
    };
    if (body !== undefined) {
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let response;
    let text;
    try {
      response = await fetch(path, init);
      text = await response.text();
    } catch {
      throw new ApiError(0, 'the admin API could not be reached');
    }
    // Signed out (or in again) meanwhile: this answer belongs to nobody.
    if (token !== sent) throw new ApiError(response.status, 'signed out', [], true);
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch { /* not JSON */ }
    if (response.ok) return data;
    const fallback = `${response.status} ${response.statusText}`.trim();
    const err = new ApiError(response.status, problemText(data, fallback), data?.errors || []);
    if (err.refused && signedIn) {
      signOut('The token was refused; it may have changed. Sign in again.');
      err.quiet = true;
    }
    throw err;
  }

  const tenantPath = (id) => `/admin/tenants/${encodeURIComponent(id)}`;

  // ---- Messages ------------------------------------------------------------------------

  let errorSource = null;

  function say(text) { $('#status').textContent = text; }

  /** Shows a failure in #error (and, for user actions, in #status). */
  function fail(err, label, { source = 'action', status = true } = {}) {
    if (err.quiet) return;
    const text = label ? `${label}: ${err.message}` : err.message;
    const box = $('#error');
    box.textContent = text;
    box.hidden = false;
    errorSource = source;
    if (status) say(text);
  }

  /** Clears #error; with a source, only an error that source showed. */
  function clearError(source) {
    if (source && source !== errorSource) return;
    const box = $('#error');
    box.textContent = '';
    box.hidden = true;
    errorSource = null;
  }

  // ---- Signing in and out --------------------------------------------------------------

  function showSignedIn(on) {
    signedIn = on;
    $('#sign-in-section').hidden = on;
    $('#console').hidden = !on;
    $('#sign-out').hidden = !on;
    clearInterval(refreshTimer);
    refreshTimer = on
      ? setInterval(() => { if (!document.hidden) refreshInstance(); }, REFRESH_MS)
      : null;
  }

  function signOut(message = '') {
    token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    showSignedIn(false);
    clearTimeout(searchTimer);
    for (const table of ['#tenants', '#pools', '#dead-jobs', '#parked-jobs']) {
      $(`${table} tbody`).replaceChildren();
    }
    say('');
    clearError();
    $('#token').value = '';
    $('#sign-in-error').textContent = message;
    $('#token').focus();
  }

  async function signIn(candidate) {
    token = candidate;
    sessionStorage.setItem(TOKEN_KEY, candidate);
    $('#sign-in').disabled = true;
    $('#sign-in-error').textContent = '';
    try {
      const registry = await api('GET', '/admin/registry');
      $('#token').value = '';
      showSignedIn(true);
      showRegistry(registry);
      tenants.cursor = '';
      tenants.back = [];
      loadTenants();
      refreshInstance();
      loadJobs();
    } catch (err) {
      token = null;
      sessionStorage.removeItem(TOKEN_KEY);
      showSignedIn(false);
      $('#sign-in-error').textContent = err.refused
        ? 'The token was refused. Check it and try again.'
        : `Could not sign in: ${err.message}`;
    } finally {
      $('#sign-in').disabled = false;
    }
  }

  // ---- Tenants -------------------------------------------------------------------------

  // `cursor` is this page's, `back` the cursors of the pages before it, `next` the next's.
  const tenants = { cursor: '', back: [], next: null, q: '', seq: 0 };
  let searchTimer = null;

  function updatePager(shown) {
    $('#tenants-prev').disabled = tenants.back.length === 0;
    $('#tenants-next').disabled = !tenants.next;
    const page = `Page ${tenants.back.length + 1}`;
    $('#tenants-page').textContent = shown == null ? page : `${page} · ${shown} shown`;
  }

  async function loadTenants() {
    const seq = ++tenants.seq;
    const params = new URLSearchParams({ limit: String(PAGE_SIZE) });
    if (tenants.cursor) params.set('cursor', tenants.cursor);
    if (tenants.q) params.set('q', tenants.q);
    try {
      const page = await api('GET', `/admin/tenants?${params}`);
      if (seq !== tenants.seq) return; // a newer load is on its way
      if (page.tenants.length === 0 && tenants.back.length > 0) {
        tenants.cursor = tenants.back.pop(); // this page emptied (a removal): go back one
        return loadTenants();
      }
      tenants.next = page.next_cursor ?? null;
      renderTenants(page.tenants);
      updatePager(page.tenants.length);
      clearError('tenants');
    } catch (err) {
      if (seq === tenants.seq) fail(err, 'Loading tenants failed', { source: 'tenants' });
      updatePager();
    }
  }

  function renderTenants(list) {
    const body = $('#tenants tbody');
    if (list.length === 0) {
      const text = tenants.q ? `No tenant matches “${tenants.q}”.` : 'No tenants yet.';
      body.replaceChildren(emptyRow(6, text));
      return;
    }
    body.replaceChildren(...list.map(tenantRow));
  }

  function tenantRow(t) {
    const other = t.isolation === 'shared' ? 'dedicated' : 'shared';
    return el('tr', { data: { tenant: t.id, version: t.version, isolation: t.isolation, state: t.state } },
      el('td', { class: 'id' }, t.id),
      el('td', { class: 'state' }, el('span', { class: `badge badge-${t.state}` }, t.state)),
      el('td', { class: 'isolation' }, t.isolation),
      el('td', { class: 'hosts' }, t.hosts.join(', ')),
      el('td', { class: 'version num' }, String(t.version)),
      el('td', { class: 'actions' },
        t.state === 'active' ? button('Suspend', 'suspend', t.id) : null,
        t.state === 'suspended' ? button('Resume', 'resume', t.id) : null,
        button(`Move to ${other}`, 'move', t.id),
        button('Remove', 'remove danger', t.id)));
  }

  /** Runs a tenant action with the row's buttons disabled, then reloads the list. */
  async function act(row, pending, failure, work) {
    clearError();
    say(pending);
    const buttons = [...row.querySelectorAll('button')];
    buttons.forEach((b) => { b.disabled = true; });
    try {
      say(await work());
    } catch (err) {
      if (err.status === 412) err.message += '. The list was reloaded; try again.';
      fail(err, failure);
    } finally {
      buttons.forEach((b) => { b.disabled = false; });
    }
    await loadTenants();
    refreshInstance();
  }

  function setState(row, t, state) {
    const verb = state === 'suspended' ? 'Suspending' : 'Resuming';
    return act(row, `${verb} tenant "${t.id}"…`, `${verb} tenant "${t.id}" failed`, async () => {
      // The ETag is the version in quotes; a change made meanwhile answers 412.
      const v = await api('PATCH', tenantPath(t.id), {
        body: { state },
        headers: { 'If-Match': `"${t.version}"` },
      });
      return `Tenant "${v.id}" is now ${v.state} (version ${v.version}).`;
    });
  }

  function moveTenant(row, t) {
    const to = t.isolation === 'shared' ? 'dedicated' : 'shared';
    return act(row, `Moving tenant "${t.id}" to ${to}… (its rows are copied; this can take a while)`,
      `Moving tenant "${t.id}" failed`, async () => {
        const r = await api('POST', `${tenantPath(t.id)}/move`,
          { body: { to }, headers: { 'If-Match': `"${t.version}"` } });
        const rows = (r.copied || []).reduce((sum, c) => sum + c.rows, 0);
        return `Tenant "${r.id}" moved from ${r.from} to ${r.to} (${fmt(rows)} rows copied, version ${r.version}).`;
      });
  }

  /** The remove dialog; resolves to {ok, drop}. */
  function confirmRemove(id) {
    const dialog = $('#confirm');
    $('#confirm-text').textContent = `Remove tenant "${id}"? Its hosts stop being served at once. ` +
      'Unless you tick the box, its data is kept and can be adopted back later.';
    $('#confirm-drop').checked = false;
    dialog.returnValue = '';
    return new Promise((resolve) => {
      dialog.addEventListener('close', () =>
        resolve({ ok: dialog.returnValue === 'yes', drop: $('#confirm-drop').checked }), { once: true });
      dialog.showModal();
    });
  }

  async function removeTenant(row, t) {
    const { ok, drop } = await confirmRemove(t.id);
    if (!ok) return;
    const path = tenantPath(t.id) + (drop ? '?drop_database=true' : '');
    await act(row, `Removing tenant "${t.id}"…`, `Removing tenant "${t.id}" failed`, async () => {
      // Only the tenant this row shows: not one removed and created again since.
      const r = await api('DELETE', path, { headers: { 'If-Match': `"${t.version}"` } });
      if (!drop) return `Removed tenant "${r.id}"; its data is kept.`;
      let text = `Removed tenant "${r.id}"` +
        (r.database_dropped ? ' and deleted its data.' : '; it had no data left to delete.');
      if (!r.purged) text += ' Its Redis keys were not deleted: no Redis is configured here.';
      return text;
    });
  }

  function onTenantClick(event) {
    const btn = event.target.closest('button');
    const row = btn?.closest('tr[data-tenant]');
    if (!row) return;
    const t = { id: row.dataset.tenant, version: row.dataset.version, isolation: row.dataset.isolation };
    if (btn.classList.contains('suspend')) setState(row, t, 'suspended');
    else if (btn.classList.contains('resume')) setState(row, t, 'active');
    else if (btn.classList.contains('move')) moveTenant(row, t);
    else if (btn.classList.contains('remove')) removeTenant(row, t);
  }

  // ---- Adding a tenant -----------------------------------------------------------------

  const addFields = { id: '#add-id', hosts: '#add-hosts', isolation: '#add-isolation' };

  /** Marks the inputs the server named in a 422 (`hosts[2]` marks hosts). */
  function markInvalid(fields) {
    for (const [name, selector] of Object.entries(addFields)) {
      const bad = fields.some((f) => f.field === name || f.field.startsWith(`${name}[`));
      if (bad) $(selector).setAttribute('aria-invalid', 'true');
      else $(selector).removeAttribute('aria-invalid');
    }
  }

  async function addTenant(event) {
    event.preventDefault();
    const form = event.currentTarget;
    const id = $('#add-id').value.trim();
    const hosts = $('#add-hosts').value.split(/[\s,]+/).filter(Boolean);
    const isolation = $('#add-isolation').value;
    clearError();
    markInvalid([]);
    say(`Creating tenant "${id}"…`);
    $('#add-submit').disabled = true;
    try {
      const t = await api('POST', '/admin/tenants', { body: { id, hosts, isolation } });
      say(`Created tenant "${t.id}" (${t.isolation}; ${t.hosts.join(', ')}).`);
      form.reset();
      await loadTenants();
      refreshInstance();
    } catch (err) {
      fail(err, `Creating tenant "${id}" failed`);
      markInvalid(err.fields);
    } finally {
      $('#add-submit').disabled = false;
    }
  }

  // ---- This instance -------------------------------------------------------------------

  let instanceBusy = false;

  function showRegistry(r) {
    $('#registry-version').textContent = String(r.version);
    const bus = $('#bus-state');
    bus.textContent = r.bus ? r.bus.state : 'no bus';
    bus.dataset.state = r.bus ? r.bus.state : 'none';
    bus.title = r.bus?.error || (r.bus ? `since ${new Date(r.bus.since * 1000).toLocaleString()}` : '');
    $('#bus-detail').textContent = r.bus?.error ? `Bus error: ${r.bus.error}` : '';
    $('#tenant-count').textContent = fmt(r.tenants.length);
  }

  function showPools(p) {
    const totals = { open: p.open, idle: p.idle, 'in-use': p.in_use, budget: p.max_total_connections, count: p.pools };
    for (const [name, n] of Object.entries(totals)) $(`#pool-${name}`).textContent = fmt(n);
    $('#pool-counters').textContent = `Since start: ${fmt(p.opened_total)} opened, ` +
      `${fmt(p.closed_total)} closed, ${fmt(p.evictions_total)} evictions, ` +
      `${fmt(p.waits_total)} waits, ${fmt(p.refusals_total)} refusals.`;
    const rows = (p.top || []).map((s) => el('tr', { data: { pool: s.pool } },
      el('td', { class: 'pool' }, s.pool),
      numCell(s.open, 'open'), numCell(s.idle, 'idle'), numCell(s.in_use, 'in-use'),
      numCell(s.max_connections, 'max')));
    $('#pools tbody').replaceChildren(...(rows.length ? rows : [emptyRow(5, 'No pools are open.')]));
  }

  async function refreshInstance() {
    if (instanceBusy || !signedIn) return;
    instanceBusy = true;
    try {
      const [registry, pools] = await Promise.all([api('GET', '/admin/registry'), api('GET', '/admin/pools')]);
      showRegistry(registry);
      showPools(pools);
      $('#instance-updated').textContent = `Updated ${new Date().toLocaleTimeString()}`;
      clearError('instance');
    } catch (err) {
      fail(err, 'Refreshing this instance failed', { source: 'instance', status: false });
    } finally {
      instanceBusy = false;
    }
  }

  // ---- Jobs ----------------------------------------------------------------------------

  function letterRow(l) {
    const at = new Date(l.at);
    return el('tr', { data: { job: l.job_id, entry: l.entry_id } },
      el('td', { class: 'job mono' }, l.job_id ?? '(malformed entry)'),
      el('td', { class: 'tenant' }, l.tenant_id),
      el('td', { class: 'kind' }, l.kind ?? '–'),
      el('td', { class: 'error', title: l.error }, l.error),
      numCell(l.attempts, 'attempts'),
      el('td', { class: 'at' }, el('time', { datetime: at.toISOString() }, at.toLocaleString())),
      el('td', { class: 'actions' },
        l.job_id ? button('Retry', 'retry', `job ${l.job_id}`) : null));
  }

  async function loadLetters(which) {
    const table = $(`#${which}-jobs`);
    const note = $(`#${which}-jobs-note`);
    note.hidden = true;
    try {
      const r = await api('GET', `/admin/jobs/${which}?limit=${JOBS_LIMIT}`);
      table.classList.remove('unavailable');
      const rows = r.jobs.map(letterRow);
      table.tBodies[0].replaceChildren(...(rows.length ? rows : [emptyRow(7, `No ${which} jobs.`)]));
      if (r.next_cursor) {
        note.textContent = `Showing the oldest ${JOBS_LIMIT}; retry or delete some to see more.`;
        note.hidden = false;
      }
      clearError(`jobs-${which}`);
    } catch (err) {
      if (err.status !== 503) {
        fail(err, `Loading ${which} jobs failed`, { source: `jobs-${which}`, status: false });
        return;
      }
      // No Redis here (or not reachable): say so where the table was.
      const text = /not configured/i.test(err.message)
        ? 'background jobs are not configured on this server (they need Redis).'
        : `background jobs are unavailable right now: ${err.message}`;
      table.classList.add('unavailable');
      table.tBodies[0].replaceChildren(emptyRow(7, text));
    }
  }

  const loadJobs = () => Promise.all([loadLetters('dead'), loadLetters('parked')]);

  async function retryJob(which, row, btn) {
    const id = row.dataset.job;
    clearError();
    btn.disabled = true;
    say(`Retrying job ${id}…`);
    try {
      const r = await api('POST', `/admin/jobs/${which}/${encodeURIComponent(id)}/retry`);
      say(`Job ${id} was queued again for tenant "${r.retried.tenant_id}".`);
    } catch (err) {
      fail(err, `Retrying job ${id} failed`);
    }
    await loadLetters(which);
  }

  function onJobClick(which) {
    return (event) => {
      const btn = event.target.closest('button.retry');
      const row = btn?.closest('tr[data-job]');
      if (row) retryJob(which, row, btn);
    };
  }

  // ---- Wiring --------------------------------------------------------------------------

  $('#sign-in-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const candidate = $('#token').value.trim();
    const message = $('#sign-in-error');
    if (!candidate) message.textContent = 'Enter the admin token.';
    else if (/[^\x20-\x7e]/.test(candidate)) message.textContent = 'A token is printable ASCII only.';
    else signIn(candidate);
  });
  $('#sign-out').addEventListener('click', () => signOut());

  $('#tenant-search').addEventListener('input', (event) => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(() => {
      const q = event.target.value.trim();
      if (q === tenants.q) return;
      Object.assign(tenants, { q, cursor: '', back: [], next: null });
      loadTenants();
    }, SEARCH_DELAY_MS);
  });
  const goTo = (cursor) => {
    Object.assign(tenants, { cursor, next: null });
    updatePager(); // "next" stays disabled until the page arrives
    loadTenants();
  };
  $('#tenants-next').addEventListener('click', () => {
    if (!tenants.next) return;
    tenants.back.push(tenants.cursor);
    goTo(tenants.next);
  });
  $('#tenants-prev').addEventListener('click', () => {
    if (tenants.back.length) goTo(tenants.back.pop());
  });
  $('#tenants tbody').addEventListener('click', onTenantClick);
  $('#add-form').addEventListener('submit', addTenant);
  $('#instance-refresh').addEventListener('click', refreshInstance);
  $('#jobs-refresh').addEventListener('click', loadJobs);
  $('#dead-jobs tbody').addEventListener('click', onJobClick('dead'));
  $('#parked-jobs tbody').addEventListener('click', onJobClick('parked'));

  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) signIn(saved);
  else showSignedIn(false);
})();
