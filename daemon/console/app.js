// Strata console: plain JS, no build step, no library. Every action is a
// control API request under /api/ (the handler the CLI's socket serves).
'use strict';

const S = { csrf: '', readOnly: false, timers: [], cleanups: [], status: null, lagSeries: {} };

// ---- DOM helpers -------------------------------------------------------

function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  append(el, kids);
  return el;
}

const SVGNS = 'http://www.w3.org/2000/svg';
function s(tag, attrs, ...kids) {
  const el = document.createElementNS(SVGNS, tag);
  setAttrs(el, attrs);
  append(el, kids);
  return el;
}

function setAttrs(el, attrs) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'text') el.textContent = v;
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : v);
  }
}

function append(el, kids) {
  for (const k of kids.flat()) {
    if (k === undefined || k === null || k === false) continue;
    el.append(k instanceof Node ? k : document.createTextNode(String(k)));
  }
}

// ---- formatting ----------------------------------------------------------

function fmtBytes(n) {
  if (n === undefined || n === null) return '—';
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let i = 0;
  let v = Number(n);
  while (Math.abs(v) >= 1024 && i < u.length - 1) { v /= 1024; i++; }
  return (i === 0 ? String(v) : v.toFixed(v < 10 ? 2 : 1)) + ' ' + u[i];
}

function fmtSeconds(sec) {
  sec = Math.round(sec);
  if (sec < 60) return sec + ' s';
  const two = (a, ua, b, ub) => a + ' ' + ua + (b ? ' ' + b + ' ' + ub : '');
  if (sec < 3600) return two(Math.floor(sec / 60), 'min', sec % 60, 's');
  if (sec < 86400) return two(Math.floor(sec / 3600), 'h', Math.floor(sec % 3600 / 60), 'min');
  return two(Math.floor(sec / 86400), 'd', Math.floor(sec % 86400 / 3600), 'h');
}

// Durations come as Go's time.Duration: nanoseconds.
const fmtDuration = (ns) => fmtSeconds(ns / 1e9);

function fmtTime(t) {
  if (!t || t.startsWith('0001-')) return '—';
  return new Date(t).toISOString().replace('T', ' ').replace(/\.\d+Z$/, ' UTC');
}

function fmtNum(n, digits) {
  if (!isFinite(n)) return '—';
  return n >= 100 ? Math.round(n).toLocaleString('en') : n.toFixed(digits ?? 1);
}

// ---- API -------------------------------------------------------------------

class APIError extends Error {}

async function call(method, path, body) {
  const opts = { method, headers: {}, credentials: 'same-origin' };
  if (method !== 'GET') opts.headers['X-Strata-CSRF'] = S.csrf;
  if (body !== undefined) {
    opts.headers['Content-Type'] = 'application/json';
    opts.body = JSON.stringify(body);
  }
  const r = await fetch(path, opts);
  const text = await r.text();
  if (r.status === 401) {
    showLogin();
    throw new APIError('log in first');
  }
  if (!r.ok) {
    let msg = text;
    try { msg = JSON.parse(text).error || text; } catch (e) { /* not JSON */ }
    throw new APIError(msg);
  }
  return (r.headers.get('Content-Type') || '').includes('json') ? JSON.parse(text) : text;
}

// api calls the control API: the same paths the CLI's client uses.
const api = (method, path, body) => call(method, '/api' + path, body);
const volPath = (name, ...rest) => ['/v1/volumes', name, ...rest].map((p, i) => i ? encodeURIComponent(p) : p).join('/');

// ---- session and routing ---------------------------------------------------

function showLogin() {
  stopTimers();
  document.getElementById('nav').hidden = true;
  document.getElementById('app').replaceChildren();
  document.getElementById('login').hidden = false;
  document.getElementById('token').focus();
}

function startSession(sess) {
  S.csrf = sess.csrf;
  S.readOnly = sess.read_only;
  document.body.classList.toggle('read-only', S.readOnly);
  document.getElementById('ro-badge').hidden = !S.readOnly;
  document.getElementById('login').hidden = true;
  document.getElementById('nav').hidden = false;
  route();
}

async function init() {
  document.getElementById('login').addEventListener('submit', async (e) => {
    e.preventDefault();
    const err = document.getElementById('login-error');
    err.textContent = '';
    try {
      const tok = document.getElementById('token');
      const sess = await call('POST', '/login', { token: tok.value });
      tok.value = '';
      startSession(sess);
    } catch (ex) {
      err.textContent = ex.message === 'log in first' ? 'wrong token' : ex.message;
      document.getElementById('login').hidden = false;
    }
  });
  document.getElementById('logout').addEventListener('click', async () => {
    try { await call('POST', '/logout'); } finally { showLogin(); }
  });
  window.addEventListener('hashchange', route);
  try {
    startSession(await call('GET', '/session'));
  } catch (e) {
    if (!(e instanceof APIError)) throw e;
  }
}

function stopTimers() {
  for (const t of S.timers) clearInterval(t);
  for (const f of S.cleanups) f();
  S.timers = [];
  S.cleanups = [];
}

// every runs f now and then every ms milliseconds until the page changes,
// skipping a turn while the last one still waits for the daemon.
function every(ms, f) {
  let busy = false;
  const run = () => {
    if (busy) return;
    busy = true;
    f().then(() => {
      const el = document.getElementById('status');
      if (el && el.classList.contains('error')) el.textContent = '';
    }, (e) => flash(e.message, true)).finally(() => { busy = false; });
  };
  run();
  S.timers.push(setInterval(run, ms));
}

function flash(msg, bad) {
  const el = document.getElementById('status');
  if (!el) return;
  el.textContent = msg;
  el.className = 'status ' + (bad ? 'error' : 'ok');
}

function route() {
  if (document.getElementById('nav').hidden) return;
  stopTimers();
  const app = document.getElementById('app');
  app.replaceChildren();
  const hash = location.hash || '#/pool';
  for (const a of document.querySelectorAll('header nav a')) a.classList.toggle('active', hash.startsWith(a.getAttribute('href')));
  const m = hash.match(/^#\/volume\/(.+)$/);
  if (m) return pageVolume(app, decodeURIComponent(m[1]));
  if (hash === '#/replication') return pageReplication(app);
  return pagePool(app);
}

// ---- widgets -----------------------------------------------------------------

function card(label, value, sub, meter) {
  return h('div', { class: 'card' },
    h('div', { class: 'label', text: label }),
    h('div', { class: 'value', text: value }),
    sub ? h('div', { class: 'sub', text: sub }) : null,
    meter !== undefined ? meterBar(meter) : null);
}

function meterBar(frac) {
  const inner = h('div');
  inner.style.width = Math.max(0, Math.min(1, frac)) * 100 + '%';
  return h('div', { class: 'meter' }, inner);
}

function table(cols, rows, empty) {
  if (!rows.length) return h('div', { class: 'table-wrap' }, h('div', { class: 'empty', text: empty }));
  return h('div', { class: 'table-wrap' }, h('table', {},
    h('thead', {}, h('tr', {}, cols.map((c) => h('th', { class: c.num ? 'num' : null, text: c.label })))),
    h('tbody', {}, rows.map((r) => h('tr', { 'data-key': r.key }, cols.map((c, i) => h('td', { class: c.num ? 'num' : (c.wrap ? 'wrap' : null) }, r.cells[i])))))));
}

// sparkline draws values (newest last) as a small line.
function sparkline(values) {
  const w = 140, ht = 28;
  const max = Math.max(1e-9, ...values);
  const d = values.map((v, i) => (i ? 'L' : 'M') + (values.length < 2 ? 0 : i / (values.length - 1) * w).toFixed(1) + ' ' + (ht - 2 - v / max * (ht - 4)).toFixed(1)).join(' ');
  return s('svg', { class: 'spark', viewBox: `0 0 ${w} ${ht}`, preserveAspectRatio: 'none' }, s('path', { d }));
}

// confirm shows a dialog that says what an action does; ok runs it and
// closes the dialog, or shows its error.
function confirmAction({ title, body, ok, run }) {
  const dlg = document.getElementById('confirm');
  document.getElementById('confirm-title').textContent = title;
  document.getElementById('confirm-body').replaceChildren(...body);
  document.getElementById('confirm-error').textContent = '';
  const btn = document.getElementById('confirm-ok');
  btn.textContent = ok;
  btn.disabled = false;
  const form = dlg.querySelector('form');
  form.onsubmit = async (e) => {
    if (e.submitter && e.submitter.value !== 'ok') return;
    e.preventDefault();
    btn.disabled = true;
    try {
      await run();
      dlg.close();
    } catch (ex) {
      document.getElementById('confirm-error').textContent = ex.message;
      btn.disabled = false;
    }
  };
  dlg.showModal();
}

// clientName is an NBD client's address; Unix socket peers have none.
const clientName = (remote) => (!remote || remote === '@' ? 'local (Unix socket)' : remote);

// ---- Pool page -----------------------------------------------------------------

function replicationSummary(st, vol) {
  const rs = (st.replication || []).filter((r) => r.volume === vol);
  if (!rs.length) return '—';
  const worst = rs.reduce((a, r) => (r.lag_seconds > a.lag_seconds ? r : a));
  const failing = rs.some((r) => r.last_error);
  return h('span', {}, `${rs.length} target${rs.length > 1 ? 's' : ''}, lag ${fmtSeconds(worst.lag_seconds)}`,
    failing ? h('span', { class: 'badge bad', text: 'failing' }) : null);
}

// mirrorSummary is a volume's mirror role and state on this host.
function mirrorSummary(ms, vol) {
  const m = (ms || []).find((x) => x.volume === vol);
  if (!m) return '—';
  const bad = m.state === 'degraded' || m.state === 'fenced';
  return h('span', {}, `${m.role}, `, h('span', { class: 'badge' + (bad ? ' bad' : ''), text: m.state }), ` epoch ${m.epoch}`);
}

// qosSummary is a volume's I/O limits (strata volume set --iops-limit ...).
function qosSummary(st, vol) {
  const q = (st.qos || {})[vol];
  if (!q) return '—';
  const parts = [];
  for (const [key, name] of [['iops', 'iops'], ['read_iops', 'read-iops'], ['write_iops', 'write-iops']]) {
    if (q[key]) parts.push(`${name} ${q[key]}`);
  }
  for (const [key, name] of [['bw', 'bw'], ['read_bw', 'read-bw'], ['write_bw', 'write-bw']]) {
    if (q[key]) parts.push(`${name} ${fmtBytes(q[key])}/s`);
  }
  return parts.length ? parts.join(', ') : '—';
}

function pagePool(app) {
  const cards = h('div', { class: 'cards', id: 'pool-cards' });
  const vols = h('div', { id: 'volumes' });
  const conns = h('div', { id: 'connections' });
  app.append(h('h1', { text: 'Pool' }), h('div', { id: 'status', class: 'status' }), cards,
    h('h2', { text: 'Volumes' }), vols, h('h2', { text: 'Connections' }), conns);
  let df = null;
  let n = 0;
  every(2000, async () => {
    // df reads the whole index: refresh it less often than status.
    const [st, sp, ms, meta] = await Promise.all([api('GET', '/v1/status'), n++ % 10 === 0 || !df ? api('GET', '/v1/df') : Promise.resolve(df), api('GET', '/v1/mirrors'), api('GET', '/v1/volmeta')]);
    S.status = st;
    df = sp;
    const p = st.pool;
    const used = p.journal.bytes + p.index_bytes;
    const c = p.cache;
    cards.replaceChildren(
      card('Disk used', fmtBytes(used), `${fmtBytes(sp.free_bytes)} free`, used / (used + sp.free_bytes)),
      card('Journal', fmtBytes(p.journal.bytes), `${p.journal.segments} segment${p.journal.segments === 1 ? '' : 's'}, seq ${p.journal.last_seq} (synced ${p.journal.synced_seq})`),
      card('Live data', fmtBytes(sp.live_bytes), `what any retained point sees; index ${fmtBytes(p.index_bytes)}`),
      card('Cache hit ratio', c.enabled ? (c.hit_ratio * 100).toFixed(1) + ' %' : 'off', c.enabled ? `${fmtBytes(c.bytes)} of ${fmtBytes(c.max_bytes)}` : null, c.enabled ? c.hit_ratio : undefined),
      forecastCard(st.capacity),
      card('Connections', String(st.connections.length), `${st.volumes.length} volume${st.volumes.length === 1 ? '' : 's'}`),
      card('Retention', fmtDuration(st.retention), st.history_cut ? `size cap cut history at ${fmtTime(st.history_cut)}` : (st.retention_size ? `capped at ${fmtBytes(st.retention_size)}` : 'no size cap')),
      card('Last GC', st.last_gc ? fmtTime(st.last_gc.at) : 'not yet', st.last_gc ? (st.last_gc.error || `freed ${fmtBytes(st.last_gc.stats.bytes_freed)}`) : null),
      p.journal_error || p.read_damaged_blocks || p.journal.damaged_blocks
        ? card('Health', p.journal_error ? 'FAILED' : 'DAMAGED', p.journal_error || `${p.journal.damaged_blocks || 0} damaged blocks at open, ${p.read_damaged_blocks || 0} damaged reads`)
        : card('Health', 'OK', `strata ${st.version}, pid ${st.pid}`));
    vols.replaceChildren(table([
      { label: 'Volume' }, { label: 'Owner' }, { label: 'Labels', wrap: true }, { label: 'Size', num: true }, { label: 'Written', num: true }, { label: 'Attached', num: true }, { label: 'State' }, { label: 'Limits', wrap: true }, { label: 'Replication' }, { label: 'Mirror' },
    ], st.volumes.map((v) => ({
      key: v.name,
      cells: [h('a', { href: '#/volume/' + encodeURIComponent(v.name), text: v.name }), (meta[v.name] || {}).owner || '—', metaBadges(meta[v.name]), fmtBytes(v.size), fmtBytes(v.written) + (v.written_recounting ? ' (recounting)' : ''),
        String(v.attached),
        h('span', {}, v.read_only ? h('span', { class: 'badge', text: 'read-only' }) : null, v.replica ? h('span', { class: 'badge', text: 'replica' }) : null),
        qosSummary(st, v.name), replicationSummary(st, v.name), mirrorSummary(ms, v.name)],
    })), 'No volumes yet: strata volume create vol0 --size 10GiB'));
    conns.replaceChildren(table([{ label: 'Export' }, { label: 'Client' }, { label: 'Since' }],
      st.connections.map((c) => ({ key: c.Remote, cells: [c.Export || '(negotiating)', clientName(c.Remote), fmtTime(c.Since)] })), 'No NBD clients connected.'));
  });
}

// forecastCard is the pool's growth and when its filesystem fills
// (strata report's forecast; status carries it).
function forecastCard(f) {
  let value = 'not known yet';
  let sub = 'needs a day of history';
  if (f && (f.growth_per_day_7d !== undefined || f.growth_per_day_30d !== undefined)) {
    value = f.days_until_full !== undefined ? `full in ${fmtNum(f.days_until_full, 1)} days` : 'not filling';
    sub = `growth ${fmtBytes(Math.round(f.growth_per_day_7d || 0))}/day over 7 days, ${fmtBytes(Math.round(f.growth_per_day_30d || 0))}/day over 30`;
  }
  const el = card('Capacity forecast', value, sub);
  el.id = 'forecast';
  if (f && f.warning) el.classList.add('warn');
  return el;
}

// metaBadges shows a volume's labels and expiry.
function metaBadges(m) {
  if (!m) return '';
  const kids = Object.keys(m.labels || {}).sort().map((k) => h('span', { class: 'badge', text: `${k}=${m.labels[k]}` }));
  if (m.expires) {
    const gone = new Date(m.expires) <= new Date();
    kids.push(h('span', { class: 'badge' + (gone ? ' bad' : ''), text: (gone ? 'expired ' : 'expires ') + m.expires.slice(0, 10) }));
  }
  return h('span', {}, ...kids);
}

// ---- Volume page -----------------------------------------------------------------

// nbdAddr is where clients reach the daemon's NBD TCP listener.
function nbdAddr(st) {
  if (!st.nbd_listen) return null;
  const i = st.nbd_listen.lastIndexOf(':');
  let host = st.nbd_listen.slice(0, i);
  const port = st.nbd_listen.slice(i + 1);
  if (host === '' || host === '0.0.0.0' || host === '[::]') host = location.hostname;
  return { host, port };
}

// exportCommands lists [label, id, text] for reading export exp.
function exportCommands(st, exp) {
  const out = [['Export name', 'export-name', exp]];
  const tcp = nbdAddr(st);
  if (st.nbd_socket) {
    const uri = `nbd+unix:///${exp}?socket=${st.nbd_socket}`;
    out.push(['NBD URI', 'export-uri', uri], ['Inspect', 'cmd-nbdinfo', `nbdinfo '${uri}'`],
      ['Copy out', 'cmd-nbdcopy', `nbdcopy '${uri}' ${exp.replace(/[@:]/g, '-')}.img`]);
  }
  if (tcp) {
    const uri = `nbd://${tcp.host}:${tcp.port}/${exp}`;
    out.push(['NBD URI (TCP)', 'export-tcp', uri],
      ['QEMU', 'cmd-qemu', `qemu-system-x86_64 -drive file=${uri},format=raw,if=virtio,readonly=on ...`],
      ['Kernel', 'cmd-nbd-client', `nbd-client -N '${exp}' ${tcp.host} ${tcp.port} /dev/nbd0`]);
  }
  return out;
}

function pageVolume(app, name) {
  const st0 = h('div', { id: 'status', class: 'status' });
  const cards = h('div', { class: 'cards', id: 'vol-cards' });
  const tl = h('div', { class: 'timeline', id: 'timeline' });
  const point = h('input', { type: 'text', id: 'point', 'aria-label': 'point in time', placeholder: 'a time (RFC 3339), a snapshot or seq:N' });
  const pickInfo = h('div', { class: 'cmds', id: 'export' });
  const actions = h('div', { class: 'row', id: 'actions' });
  const space = h('div', { id: 'space' });
  const charts = h('div', { class: 'charts', id: 'charts' });
  app.append(h('h1', {}, h('a', { href: '#/pool', text: 'Pool' }), ' / ', h('span', { id: 'vol-name', text: name })), st0, cards,
    h('h2', { text: 'History' }),
    h('div', { class: 'panel' },
      h('p', { class: 'sub', text: 'Write activity (counted by the minute) over the retention window; snapshots are marks. Click a moment (or a snapshot) to read, clone or roll back to it.' }),
      tl,
      h('div', { class: 'pick' },
        h('div', { class: 'row' }, h('label', { for: 'point', text: 'Point' }), point,
          h('button', { id: 'pick-now', text: 'Now', onclick: () => pick(new Date().toISOString()) })),
        pickInfo, actions)),
    h('h2', { text: 'Space' }), space,
    h('h2', { text: 'Live I/O' }), charts);

  let hist = null;
  let info = null;
  let spec = '';

  function pick(p) {
    spec = p;
    point.value = p;
    showPoint();
    drawTimeline();
  }
  point.addEventListener('change', () => pick(point.value.trim()));

  function showPoint() {
    if (!spec || !S.status) {
      pickInfo.replaceChildren(h('div', { class: 'sub', text: 'No point picked yet.' }));
      actions.replaceChildren();
      return;
    }
    const exp = `${name}@${spec}`;
    pickInfo.replaceChildren(...exportCommands(S.status, exp).map(([label, id, text]) =>
      h('div', { class: 'cmd' }, h('span', { text: label }), h('code', { id, text }))));
    if (S.readOnly) {
      actions.replaceChildren(h('span', { class: 'sub', text: 'Read-only console: clone and roll back with the CLI (strata clone, strata rollback).' }));
      return;
    }
    actions.replaceChildren(
      h('button', { id: 'clone', class: 'primary', text: 'Clone…', onclick: () => cloneDialog(exp) }),
      h('button', { id: 'rollback', text: 'Roll back…', onclick: () => rollbackDialog() }),
      h('button', { id: 'snapshot', text: 'Snapshot now…', onclick: () => snapshotDialog() }));
  }

  function pointText() {
    const t = Date.parse(spec);
    return isNaN(t) ? spec : fmtTime(new Date(t).toISOString()) + ` (${spec})`;
  }

  function cloneDialog(exp) {
    const stamp = new Date().toISOString().slice(0, 19).replace(/[-:]/g, '').replace('T', '-');
    const input = h('input', { type: 'text', id: 'clone-name', value: `${name}-${stamp}`, required: true });
    confirmAction({
      title: `Clone ${name} at a point`,
      body: [h('p', {}, 'Creates a new, writable volume holding ', h('b', { text: name }), '’s contents as of ', h('b', { text: pointText() }),
        '. It shares every block with ', name, ' (no data is copied) and ', h('b', { text: name }), ' itself is not changed.'),
      h('p', { class: 'sub' }, 'Same as: ', h('code', { text: `strata clone ${exp} NEWVOL` })),
      h('label', { for: 'clone-name', text: 'New volume name' }), input],
      ok: 'Create clone',
      run: async () => {
        const v = await api('POST', '/v1/clones', { source: exp, name: input.value.trim() });
        flash(`Created volume ${v.name} from ${exp}.`);
        const link = h('a', { id: 'clone-link', href: '#/volume/' + encodeURIComponent(v.name), text: `open ${v.name}` });
        document.getElementById('status').append(' ', link);
      },
    });
  }

  function rollbackDialog() {
    const attached = info ? info.attached : 0;
    const force = h('input', { type: 'checkbox', id: 'rollback-force' });
    confirmAction({
      title: `Roll back ${name}`,
      body: [h('p', {}, h('b', { text: name }), '’s contents become what they were at ', h('b', { text: pointText() }), '.'),
        h('p', {}, 'Nothing is destroyed: everything written after that moment stays readable as history (for the retention window) and every snapshot is kept, so rolling back to a later point undoes this.'),
        attached
          ? h('p', { class: 'error' }, `${attached} client(s) are attached: they see the new contents from their next request on, under a running filesystem that did not expect it. The daemon refuses unless forced.`)
          : h('p', { class: 'sub', text: 'No clients are attached.' }),
        attached ? h('label', {}, force, ' Roll back even though clients are attached') : null,
        h('p', { class: 'sub' }, 'Same as: ', h('code', { text: `strata rollback ${name} --to ${spec}${attached ? ' --force' : ''}` }))],
      ok: 'Roll back',
      run: async () => {
        const pt = await api('POST', volPath(name, 'rollback'), { to: spec, force: force.checked });
        flash(`Rolled ${name} back to seq:${pt.seq} (${fmtTime(pt.time)}).`);
        refreshHistory();
      },
    });
  }

  function snapshotDialog() {
    const input = h('input', { type: 'text', id: 'snapshot-name', required: true });
    confirmAction({
      title: `Snapshot ${name}`,
      body: [h('p', {}, 'Names the current head of ', h('b', { text: name }), ': it stays readable as ', h('code', { text: `${name}@NAME` }), ' until deleted, beyond the retention window.'),
        h('label', { for: 'snapshot-name', text: 'Snapshot name' }), input],
      ok: 'Create snapshot',
      run: async () => {
        const sn = await api('POST', volPath(name, 'snapshots'), { name: input.value.trim(), label: '' });
        flash(`Created snapshot ${sn.name} (seq:${sn.seq}).`);
        refreshHistory();
      },
    });
  }

  // The time line's geometry, kept for clicks and for tests.
  const geo = { left: 12, right: 12, top: 34, bottom: 22, from: 0, to: 1, width: 0, height: 150 };
  const xOf = (ms) => geo.left + (ms - geo.from) / (geo.to - geo.from) * (geo.width - geo.left - geo.right);
  const msOf = (x) => geo.from + (x - geo.left) / (geo.width - geo.left - geo.right) * (geo.to - geo.from);
  window.strataTimeline = {
    // clientPoint is where in the window a click picks moment ms.
    clientPoint(ms) {
      const svg = tl.querySelector('svg');
      const r = svg.getBoundingClientRect();
      return { x: r.left + xOf(ms) * r.width / geo.width, y: r.top + (geo.top + (geo.height - geo.bottom)) / 2 * r.height / geo.height };
    },
    range: () => ({ from: geo.from, to: geo.to, oldest: hist ? Date.parse(hist.oldest.time) : 0 }),
  };

  function drawTimeline() {
    if (!hist) return;
    const width = Math.max(300, Math.round(tl.clientWidth || 600));
    const oldest = Date.parse(hist.oldest.time);
    const newest = Date.parse(hist.newest.time);
    const snapTimes = hist.snapshots.map((sn) => Date.parse(sn.time));
    const branchTimes = hist.branches.flatMap((b) => [b.time, b.base_time]).filter((t) => t).map((t) => Date.parse(t));
    Object.assign(geo, { width, from: Math.min(oldest, ...snapTimes, ...branchTimes), to: Math.max(newest, geo.from + 1000) });
    if (geo.to - geo.from < 1000) geo.to = geo.from + 1000;
    const base = geo.height - geo.bottom;
    const svg = s('svg', { viewBox: `0 0 ${width} ${geo.height}`, 'data-from': geo.from, 'data-to': geo.to, role: 'img', 'aria-label': `history of ${name}` });
    svg.append(s('rect', { class: 'window', x: xOf(oldest), y: geo.top, width: Math.max(0, xOf(newest) - xOf(oldest)), height: base - geo.top }));
    const maxW = Math.max(1, ...hist.activity.map((b) => b.writes));
    hist.activity.forEach((b, i) => {
      if (!b.writes) return;
      const t0 = Date.parse(b.start);
      const t1 = i + 1 < hist.activity.length ? Date.parse(hist.activity[i + 1].start) : newest;
      const x0 = xOf(t0), x1 = xOf(Math.min(t1, newest));
      const hh = Math.max(2, b.writes / maxW * (base - geo.top - 4));
      const r = s('rect', { class: 'bar', x: x0 + 0.5, y: base - hh, width: Math.max(1, x1 - x0 - 1), height: hh });
      r.append(s('title', { text: `${b.writes} writes from ${fmtTime(b.start)}` }));
      svg.append(r);
    });
    svg.append(s('line', { class: 'axis', x1: geo.left, x2: width - geo.right, y1: base, y2: base }));
    for (let i = 0; i <= 4; i++) {
      const t = geo.from + (geo.to - geo.from) * i / 4;
      const lbl = new Date(t).toISOString().slice(11, 19);
      svg.append(s('text', { class: 'tick', x: xOf(t), y: geo.height - 6, 'text-anchor': i === 0 ? 'start' : (i === 4 ? 'end' : 'middle'), text: lbl }));
    }
    hist.snapshots.forEach((sn, i) => {
      const x = xOf(Date.parse(sn.time));
      const g = s('g', { class: 'snap', 'data-snapshot': sn.name });
      g.append(s('line', { x1: x, x2: x, y1: geo.top - 6, y2: base, stroke: 'currentColor', class: 'axis' }),
        s('path', { d: `M${x - 6} ${geo.top - 14} L${x + 6} ${geo.top - 14} L${x} ${geo.top - 4} Z` }),
        s('text', { class: 'snaplabel', x: x + 8, y: geo.top - 8 - (i % 2) * 12, text: sn.name }),
        s('title', { text: `snapshot ${sn.name} (seq:${sn.seq}) ${fmtTime(sn.time)}${sn.label ? ': ' + sn.label : ''}` }));
      g.addEventListener('click', (e) => { e.stopPropagation(); pick(sn.name); });
      svg.append(g);
    });
    // Branches: a curve from the point a clone or rollback shows to where
    // it began. A clone's leads to its page; a rollback's picks the
    // moment just before it (what the rollback set aside).
    hist.branches.forEach((b) => {
      if (!b.time || !b.base_time || b.kind === 'origin') return;
      const x0 = xOf(Date.parse(b.base_time)), x1 = xOf(Date.parse(b.time));
      const y0 = base - 2, y1 = geo.top + 8;
      const g = s('g', { class: 'branch ' + b.kind, 'data-branch': b.kind + ':' + b.volume + ':' + b.seq },
        s('path', { d: `M${x0} ${y0} C${x0} ${y1} ${x0} ${y1} ${x1} ${y1}` }),
        s('circle', { cx: x1, cy: y1, r: 4 }),
        s('text', { x: Math.min(x1 + 6, width - geo.right - 80), y: y1 + 14, text: b.kind === 'clone' ? 'clone ' + b.volume : '↺ rollback' }),
        s('title', { text: branchText(name, b) }));
      g.addEventListener('click', (e) => {
        e.stopPropagation();
        if (b.kind === 'clone') location.hash = '#/volume/' + encodeURIComponent(b.volume);
        else pick(`seq:${b.seq - 1}`);
      });
      svg.append(g);
    });
    const t = spec === '' ? NaN : (hist.snapshots.find((sn) => sn.name === spec) ? Date.parse(hist.snapshots.find((sn) => sn.name === spec).time) : Date.parse(spec));
    if (!isNaN(t)) svg.append(s('line', { class: 'cursor', x1: xOf(t), x2: xOf(t), y1: geo.top - 4, y2: base }));
    svg.addEventListener('click', (e) => {
      const r = svg.getBoundingClientRect();
      const ms = msOf((e.clientX - r.left) * geo.width / r.width);
      // Before the window only snapshots remain; after now is the head.
      pick(new Date(Math.round(Math.min(Math.max(ms, oldest), Date.now()))).toISOString());
    });
    tl.replaceChildren(svg,
      h('div', { class: 'sub' }, `Readable from ${fmtTime(hist.oldest.time)} (seq:${hist.oldest.seq}) to now (seq:${hist.newest.seq}); retention ${fmtDuration(hist.retention)}`,
        hist.history_cut ? `; the journal's size cap cut history at ${fmtTime(hist.history_cut)}` : ''),
      hist.branches.length ? h('ul', { id: 'branches', class: 'branches' }, hist.branches.map((b) => h('li', {},
        branchText(name, b), ' ',
        b.kind === 'rollback' ? h('button', { class: 'link', text: 'pick the moment before it', onclick: () => pick(`seq:${b.seq - 1}`) })
          : h('a', { href: '#/volume/' + encodeURIComponent(b.volume), text: 'open ' + b.volume })))) : null);
  }

  async function refreshHistory() {
    hist = await api('GET', volPath(name, 'history') + '?buckets=60');
    hist.snapshots = hist.snapshots || [];
    hist.branches = hist.branches || [];
    hist.activity = hist.activity || [];
    drawTimeline();
  }

  every(2000, async () => {
    const st = await api('GET', '/v1/status');
    S.status = st;
    info = st.volumes.find((v) => v.name === name);
    if (!info) throw new APIError(`no volume ${name}`);
    cards.replaceChildren(
      card('Size', fmtBytes(info.size)),
      card('Written', fmtBytes(info.written), info.written_recounting ? 'recounting' : null, info.written / info.size),
      card('Attached clients', String(info.attached), st.connections.filter((c) => c.Export === name || (c.Export || '').startsWith(name + '@')).map((c) => clientName(c.Remote) + ' → ' + c.Export).join(', ') || null),
      card('State', info.read_only ? 'read-only' : (info.replica ? 'replica' : 'read-write'), `created ${fmtTime(info.created)}`));
    if (!pickInfo.firstChild) showPoint();
  });
  every(5000, refreshHistory);
  // df reads the whole index: every 15 s, or when asked.
  const refreshSpace = async () => showSpace(space, name, await api('GET', '/v1/df'), () => refreshSpace().catch((e) => flash(e.message, true)));
  every(15000, refreshSpace);
  liveCharts(charts, name);
  const onResize = () => drawTimeline();
  window.addEventListener('resize', onResize);
  S.cleanups.push(() => window.removeEventListener('resize', onResize));
}

// branchText says what a fork of vol's history is, as strata pit does.
function branchText(vol, b) {
  const at = (t) => fmtTime(t);
  if (b.kind === 'origin') return `${at(b.time)}: cloned from ${b.volume}@seq:${b.base_seq} (${at(b.base_time)})`;
  if (b.kind === 'rollback') return `${at(b.time)}: rolled back to ${vol}@seq:${b.base_seq} (${at(b.base_time)})`;
  return `${at(b.time)}: clone ${b.volume} made of ${vol}@seq:${b.base_seq} (${at(b.base_time)})`;
}

function showSpace(el, name, df, refresh) {
  const v = (df.volumes || []).find((x) => x.name === name);
  if (!v) {
    el.replaceChildren(h('div', { class: 'empty', text: 'No space figures for this volume.' }));
    return;
  }
  const snapExcl = Object.values(v.snapshot_exclusive || {}).reduce((a, b) => a + b, 0);
  const parts = [
    ['exclusive', 'Head only', v.exclusive, 'head data no snapshot holds'],
    ['shared', 'Shared with snapshots', v.shared, 'head data snapshots also hold'],
    ['snapshots', 'Snapshots only', snapExcl + v.snapshots_shared, 'old data only snapshots hold'],
    ['history', 'History', v.history, 'old data only the retention window holds'],
    ['origin', 'Clone origins', v.origin, 'old data kept for clones, rollbacks or open readers'],
  ];
  const total = parts.reduce((a, p) => a + p[2], 0) || 1;
  const bar = h('div', { class: 'stack' }, parts.map(([k, , n]) => {
    const d = h('div', { class: 'k-' + k });
    d.style.width = n / total * 100 + '%';
    return d;
  }));
  el.replaceChildren(h('div', { class: 'panel' },
    h('div', { class: 'row' }, h('span', { class: 'sub', text: `Provisioned ${fmtBytes(v.provisioned)}, written ${fmtBytes(v.written)}, as strata df at ${new Date().toISOString().slice(11, 19)} UTC` }),
      h('button', { id: 'space-refresh', text: 'Refresh', onclick: refresh })), bar,
    table([{ label: 'Part' }, { label: 'Bytes', num: true }, { label: 'What' }],
      parts.map(([k, label, n, what]) => ({ key: k, cells: [h('span', {}, h('span', { class: 'key k-' + k }), label), fmtBytes(n), what] }))
        .concat(Object.entries(v.snapshot_exclusive || {}).map(([sn, n]) => ({ key: 'snap-' + sn, cells: [`  snapshot ${sn}`, fmtBytes(n), 'freed if this snapshot is deleted'] }))), '')));
}

// ---- live I/O charts -------------------------------------------------------------

// parseMetrics reads the Prometheus text format: name -> [{labels, value}].
function parseMetrics(text) {
  const out = {};
  for (const line of text.split('\n')) {
    if (!line || line[0] === '#') continue;
    const m = line.match(/^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)$/);
    if (!m) continue;
    const labels = {};
    for (const l of (m[2] || '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]] = l[2].replace(/\\(.)/g, '$1');
    (out[m[1]] = out[m[1]] || []).push({ labels, value: Number(m[3]) });
  }
  return out;
}

function counter(ms, name, vol, op) {
  const e = (ms[name] || []).find((x) => x.labels.volume === vol && x.labels.op === op);
  return e ? e.value : 0;
}

function liveCharts(el, name) {
  const N = 120;
  const series = { iops: { r: [], w: [] }, bw: { r: [], w: [] }, lat: { r: [], w: [] } };
  const defs = [['iops', 'IOPS', (v) => fmtNum(v, 0)], ['bw', 'Bandwidth', (v) => fmtBytes(Math.round(v)) + '/s'], ['lat', 'Latency (mean)', (v) => fmtNum(v, 2) + ' ms']];
  const boxes = {};
  for (const [k, title] of defs) {
    boxes[k] = h('div', { class: 'chart panel', id: 'chart-' + k }, h('div', { text: title }));
    el.append(boxes[k]);
  }
  let prev = null;
  every(1000, async () => {
    const ms = parseMetrics(await api('GET', '/metrics'));
    const now = performance.now();
    const cur = {};
    for (const [op, key] of [['read', 'r'], ['write', 'w']]) {
      cur[key] = { n: counter(ms, 'strata_io_seconds_count', name, op), sum: counter(ms, 'strata_io_seconds_sum', name, op), bytes: counter(ms, 'strata_io_bytes_total', name, op) };
    }
    if (prev) {
      const dt = (now - prev.t) / 1000;
      for (const key of ['r', 'w']) {
        const dn = cur[key].n - prev[key].n;
        push(series.iops[key], dn / dt);
        push(series.bw[key], (cur[key].bytes - prev[key].bytes) / dt);
        push(series.lat[key], dn > 0 ? (cur[key].sum - prev[key].sum) / dn * 1000 : 0);
      }
    }
    prev = { t: now, ...cur };
    for (const [k, title, fmt] of defs) drawChart(boxes[k], title, series[k], fmt, N);
  });
  function push(a, v) {
    a.push(v);
    if (a.length > N) a.shift();
  }
}

function drawChart(box, title, ser, fmt, n) {
  const w = 300, ht = 100;
  const max = Math.max(1e-9, ...ser.r, ...ser.w);
  const path = (a) => a.map((v, i) => (i ? 'L' : 'M') + ((n - a.length + i) / (n - 1) * w).toFixed(1) + ' ' + (ht - 2 - v / max * (ht - 6)).toFixed(1)).join(' ');
  const last = (a) => (a.length ? a[a.length - 1] : 0);
  const svg = s('svg', { viewBox: `0 0 ${w} ${ht}`, preserveAspectRatio: 'none' },
    [0.25, 0.5, 0.75].map((f) => s('line', { class: 'grid', x1: 0, x2: w, y1: ht * f, y2: ht * f, 'vector-effect': 'non-scaling-stroke' })),
    s('path', { class: 'r', d: path(ser.r), 'vector-effect': 'non-scaling-stroke' }),
    s('path', { class: 'w', d: path(ser.w), 'vector-effect': 'non-scaling-stroke' }));
  box.replaceChildren(h('div', {}, title), svg,
    h('div', { class: 'legend' }, h('span', { class: 'r', text: `read ${fmt(last(ser.r))}` }), ' · ', h('span', { class: 'w', text: `write ${fmt(last(ser.w))}` }), ` · peak ${fmt(max)} · last 2 min`));
}

// ---- Replication page ------------------------------------------------------------

function pageReplication(app) {
  const list = h('div', { id: 'replication' });
  const mirrors = h('div', { id: 'mirrors' });
  app.append(h('h1', { text: 'Replication' }), h('div', { id: 'status', class: 'status' }),
    h('p', { class: 'sub', text: 'Targets each volume ships its journal to, the point each has acknowledged and how far behind it is. Lag over time is kept while this page is open.' }), list,
    h('h2', { text: 'Mirrors' }), mirrors);
  every(2000, async () => {
    const [rs, ms] = await Promise.all([api('GET', '/v1/replication'), api('GET', '/v1/mirrors')]);
    mirrors.replaceChildren(ms.length ? table([
      { label: 'Volume' }, { label: 'Role' }, { label: 'State' }, { label: 'Epoch', num: true }, { label: 'Peer' }, { label: 'Lag', num: true }, { label: 'Lease left' }, { label: 'Since' }, { label: 'Last error' },
    ], ms.map((m) => ({
      key: m.volume,
      cells: [h('a', { href: '#/volume/' + encodeURIComponent(m.volume), text: m.volume }), m.role,
        h('span', { class: 'badge' + (m.state === 'degraded' || m.state === 'fenced' ? ' bad' : ''), text: m.state }), String(m.epoch),
        h('span', { class: 'mono', text: m.peer_url }), m.role !== 'primary' ? '—' : (m.lag_bytes < 0 ? 'unknown' : fmtBytes(m.lag_bytes || 0)),
        m.lease_left || '—', fmtTime(m.since), m.last_error || ''],
    })), '') : h('div', { class: 'panel empty', text: 'No mirrored volumes: strata mirror add VOL --to strata://HOST:PORT --token-file F --witness HOST:PORT (docs/ha.md)' }));
    for (const r of rs) {
      const a = (S.lagSeries[r.id] = S.lagSeries[r.id] || []);
      a.push(r.lag_seconds);
      if (a.length > 150) a.shift();
    }
    if (!rs.length) {
      list.replaceChildren(h('div', { class: 'panel empty', text: 'No replication configured: strata replication add VOL --to strata://HOST:PORT/VOL (or s3://...)' }));
      return;
    }
    list.replaceChildren(...rs.map((r) => h('div', { class: 'panel target', 'data-key': r.id },
      h('div', { class: 'target-head' }, h('a', { href: '#/volume/' + encodeURIComponent(r.volume), text: r.volume }), ' → ',
        h('span', { class: 'mono', text: r.target }), ' ', h('span', { class: 'badge', text: r.mode }),
        r.running ? h('span', { class: 'badge', text: 'shipping' }) : null,
        r.last_error ? h('span', { class: 'badge bad', text: 'failing' }) : null),
      h('dl', { class: 'facts' },
        fact('Acked', `seq:${r.acked_seq}`),
        fact('Lag', `${fmtSeconds(r.lag_seconds)}, ${r.lag_records} changes, ${fmtBytes(r.lag_bytes)}`),
        fact('Lag over time', sparkline(S.lagSeries[r.id])),
        fact('Last success', fmtTime(r.last_ok)),
        fact('Last run', fmtTime(r.last_run)),
        fact('Shipped', fmtBytes(r.shipped_bytes) + ' since start')),
      r.last_error ? h('p', { class: 'error last-error', text: 'Last error: ' + r.last_error }) : null)));
  });
}

function fact(label, value) {
  return h('div', {}, h('dt', { text: label }), h('dd', {}, value));
}

init();
