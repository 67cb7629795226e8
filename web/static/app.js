// carewatch care-manager dashboard: our own small script, no third-party code, no build step.
// This file: sign-in, the API, the triage list, the open-alert list and the live stream; the
// patient view (charts, actions, timeline) is in view.js.
'use strict';
const $ = (s) => document.querySelector(s);
let token = sessionStorage.getItem('carewatch-token') || '';
// With single sign-on the browser holds a session cookie (HttpOnly) and the page a CSRF token
// for state-changing calls; without it, a pasted token is sent as a bearer token.
let sso = false;
let csrf = '';

function authHeaders(method) {
  if (sso) return method && method !== 'GET' ? { 'X-CSRF-Token': csrf } : {};
  return { Authorization: 'Bearer ' + token };
}
let patients = [];
let you = null;
// A deep link `/?patient=<id>` opens that patient's view (kept across single sign-on).
const wanted = new URLSearchParams(window.location.search).get('patient') || sessionStorage.getItem('carewatch-open-patient');
sessionStorage.removeItem('carewatch-open-patient');
let selected = wanted || null;
let streamAbort = null;
let refreshTimer = null;

async function api(path, opts = {}) {
  const r = await fetch(path, { ...opts, headers: { ...(opts.headers || {}), ...authHeaders(opts.method) } });
  if (r.status === 401) { signOut(sso ? 'Your session has ended; please sign in again.' : 'Your token was not accepted.'); throw new Error('unauthorized'); }
  if (!r.ok) throw new Error((await r.json().catch(() => ({}))).message || r.statusText);
  return r.json();
}

function esc(s) {
  return String(s ?? '').replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
}

function announce(msg) { $('#announce').textContent = msg; }

function ago(iso) {
  if (!iso) return 'never';
  const m = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 60000));
  if (m < 1) return 'just now';
  if (m < 120) return `${m} min ago`;
  if (m < 2880) return `${Math.round(m / 60)} h ago`;
  return `${Math.round(m / 1440)} d ago`;
}

function clock(iso) { return iso ? new Date(iso).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' }) : ''; }

function signOut(msg) {
  token = ''; csrf = ''; sessionStorage.removeItem('carewatch-token');
  if (streamAbort) streamAbort.abort();
  $('#app').hidden = true; $('#signin-panel').hidden = false; $('#signout').hidden = true;
  $('#signin-error').textContent = msg || '';
}

// Single sign-on: end the session here, then at the identity provider (RP-initiated logout).
async function ssoSignOut() {
  const r = await fetch('/auth/logout', { method: 'POST', headers: { 'X-CSRF-Token': csrf } });
  const to = r.ok ? (await r.json()).redirect : '/';
  signOut('');
  window.location.assign(to || '/');
}

function showApp(name) {
  $('#signin-panel').hidden = true; $('#app').hidden = false; $('#signout').hidden = false;
  $('#who').textContent = name;
  live();
}

async function signIn(t) {
  token = t.trim();
  try {
    await refresh();
  } catch (e) {
    if (e.message !== 'unauthorized') $('#signin-error').textContent = e.message;
    return;
  }
  sessionStorage.setItem('carewatch-token', token);
  showApp(you ? you.name : 'signed in');
}

async function refresh() {
  const data = await api('/v1/triage');
  patients = data.patients;
  you = data.you || null;
  renderAlerts();
  renderPatients();
  if (selected) {
    await openPatient(selected, { quiet: true }).catch((e) => {
      if (e.message === 'unauthorized') throw e;
      $('#detail-title').textContent = e.message;
    });
  }
}

function scheduleRefresh() {
  if (refreshTimer) return;
  refreshTimer = setTimeout(() => { refreshTimer = null; refresh().catch(() => {}); }, 300);
}

function alertStatus(a) {
  if (a.status === 'snoozed' && a.snoozed_until) return `snoozed until ${clock(a.snoozed_until)}`;
  return a.status;
}

function renderAlerts() {
  const list = $('#alerts');
  const alerts = patients.flatMap((p) => p.open_alerts.filter((a) => a.status !== 'pending'));
  const rank = (a) => (a.status === 'firing' ? 0 : 1) * 10 + (3 - levelRank(a.level));
  alerts.sort((a, b) => rank(a) - rank(b));
  list.innerHTML = alerts.length ? '' : '<li class="none">No open alerts.</li>';
  for (const a of alerts) {
    const li = document.createElement('li');
    li.className = `alert ${a.severity} ${a.status} level-${a.level}`;
    li.dataset.id = a.alert_id;
    li.dataset.patient = a.patient_id;
    li.innerHTML = `<span class="badge level-${esc(a.level)}">${esc(a.level)}</span><strong>${esc(a.title)}</strong>
      <a class="patient" href="/?patient=${encodeURIComponent(a.patient_id)}">${esc(a.patient_id)}</a>
      <span class="msg">${esc(a.message)}</span><span class="since">since ${esc(clock(a.episode_start))}</span>
      <span class="status">${esc(alertStatus(a))}</span>`;
    li.querySelector('a.patient').onclick = (e) => { e.preventDefault(); openPatient(a.patient_id, { focus: true }); };
    const b = document.createElement('button');
    b.className = 'ack'; b.textContent = a.status === 'acknowledged' ? 'Acknowledged' : 'Acknowledge';
    b.disabled = a.status !== 'firing';
    b.onclick = async () => {
      b.disabled = true;
      try { await api(`/v1/alerts/${encodeURIComponent(a.alert_id)}/ack`, { method: 'POST' }); } catch (e) { b.disabled = false; }
      await refresh();
    };
    li.appendChild(b);
    list.appendChild(li);
  }
}

function levelRank(l) { return { urgent: 3, warning: 2, info: 1 }[l] || 0; }

function spark(values) {
  if (!values || values.length < 2) return '';
  const lo = Math.min(...values), hi = Math.max(...values), span = hi - lo || 1;
  const pts = values.map((v, i) => `${(i / (values.length - 1) * 118 + 1).toFixed(1)},${(22 - (v - lo) / span * 20).toFixed(1)}`).join(' ');
  return `<svg class="spark" viewBox="0 0 120 24" role="img" aria-label="heart rate trend"><polyline points="${pts}"/></svg>`;
}

function news2Cell(n) {
  if (!n) return '<span class="muted">–</span>';
  const title = n.parts.map((p) => `${p.vital} ${p.value}: ${p.points}`).join(', ') + (n.partial ? `; missing ${n.missing.join(', ')}` : '');
  return `<span class="news2 band-${esc(n.band)}" title="${esc(title)}">${n.score}</span>${n.partial ? ' <span class="muted">partial</span>' : ''}`;
}

function renderPatients() {
  const body = $('#patients tbody');
  // Keep keyboard focus on the same patient's link across a re-render.
  const focused = document.activeElement && document.activeElement.closest && document.activeElement.closest('#patients tr.patient');
  const keep = focused ? focused.dataset.id : null;
  body.innerHTML = '';
  patients.forEach((p, i) => {
    const tr = document.createElement('tr');
    tr.className = 'patient' + (p.level ? ` has-alert level-${p.level}` : '') + (p.patient_id === selected ? ' selected' : '');
    tr.dataset.id = p.patient_id;
    tr.dataset.rank = i + 1;
    if (p.patient_id === selected) tr.setAttribute('aria-current', 'true');
    const top = p.open_alerts.find((a) => a.status !== 'pending');
    const alert = top ? `<span class="badge level-${esc(top.level)}">${esc(top.level)}</span> ${esc(top.title)} <span class="muted">${esc(alertStatus(top))}</span>` : '<span class="muted">none</span>';
    const silent = p.silent ? ' <span class="badge silent">silent</span>' : '';
    tr.innerHTML = `<th scope="row"><a class="open" href="/?patient=${encodeURIComponent(p.patient_id)}">${esc(p.patient_id)}</a></th>
      <td class="alert-cell">${alert}</td><td class="news2-cell">${news2Cell(p.news2)}</td>
      <td class="last">${esc(ago(p.last_data))}${silent}</td><td class="trend">${spark(p.vitals.heart_rate && p.vitals.heart_rate.spark)}</td>`;
    tr.querySelector('a.open').onclick = (e) => { e.preventDefault(); e.stopPropagation(); openPatient(p.patient_id, { focus: true }); };
    tr.onclick = () => openPatient(p.patient_id, { focus: true });
    body.appendChild(tr);
    if (p.patient_id === keep) tr.querySelector('a.open').focus();
  });
}

async function live() {
  if (streamAbort) streamAbort.abort();
  streamAbort = new AbortController();
  try {
    const r = await fetch('/v1/stream', { headers: authHeaders('GET'), signal: streamAbort.signal });
    if (!r.ok || !r.body) throw new Error('stream refused');
    $('#live').classList.remove('off');
    const reader = r.body.getReader();
    const dec = new TextDecoder();
    let buf = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      let i;
      while ((i = buf.indexOf('\n\n')) >= 0) {
        const block = buf.slice(0, i); buf = buf.slice(i + 2);
        let event = 'message', data = '';
        for (const line of block.split('\n')) {
          if (line.startsWith('event:')) event = line.slice(6).trim();
          else if (line.startsWith('data:')) data += line.slice(5).trim();
        }
        if (event === 'alert') scheduleRefresh();
        else if (event === 'vitals') onVitals(JSON.parse(data));
      }
    }
  } catch (e) {
    if (e.name === 'AbortError') return;
  }
  $('#live').classList.add('off');
  if (token || csrf) setTimeout(live, 3000);
}

let vitalsDirty = false;
function onVitals(items) {
  let mine = false;
  for (const it of items) {
    const p = patients.find((x) => x.patient_id === it.patient_id);
    if (!p) continue;
    const v = p.vitals[it.vital] || (p.vitals[it.vital] = { code: it.code, spark: [] });
    v.value = it.value; v.time = it.time;
    if (!p.last_data || it.time > p.last_data) p.last_data = it.time;
    if (it.patient_id === selected) mine = true;
  }
  if (!vitalsDirty) {
    vitalsDirty = true;
    // New readings can change the order (NEWS2, silence): fetch the list again, at most every 2 s.
    setTimeout(() => { vitalsDirty = false; refresh().catch(() => {}); }, mine ? 1000 : 2000);
  }
}

$('#signin-form').onsubmit = (e) => { e.preventDefault(); signIn($('#token').value); };
$('#sso-signin').onclick = () => { if (selected) sessionStorage.setItem('carewatch-open-patient', selected); };
$('#signout').onclick = () => (sso ? ssoSignOut() : signOut(''));
window.addEventListener('popstate', () => {
  const p = new URLSearchParams(window.location.search).get('patient');
  if (p && p !== selected) openPatient(p, { push: false });
});
async function start() {
  const cfg = await fetch('/auth/config').then((r) => r.json()).catch(() => ({ sso: false }));
  sso = !!cfg.sso;
  $('#sso-panel').hidden = !sso;
  $('#signin-form').hidden = sso;
  if (!sso) { if (token) signIn(token); return; }
  const r = await fetch('/auth/session');
  if (!r.ok) return;
  const me = await r.json();
  csrf = me.csrf;
  try { await refresh(); } catch (e) { return; }
  showApp(me.name || me.sub);
}
start();
