// carewatch care-manager dashboard: our own small script, no third-party code.
'use strict';
const $ = (s) => document.querySelector(s);
const CHARTS = [
  { title: 'Heart rate (/min)', codes: ['8867-4'] },
  { title: 'SpO2 (%)', codes: ['2708-6'] },
  { title: 'Steps (per bucket)', codes: ['55423-8'], sum: true },
  { title: 'Blood pressure (mmHg)', codes: ['8480-6', '8462-4'] },
];
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
// A deep link `/?patient=<id>` opens that patient's view (kept across single sign-on).
const wanted = new URLSearchParams(window.location.search).get('patient') || sessionStorage.getItem('carewatch-open-patient');
sessionStorage.removeItem('carewatch-open-patient');
let selected = wanted || null;
let hours = 1;
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

async function showApp(who) {
  $('#signin-panel').hidden = true; $('#app').hidden = false; $('#signout').hidden = false;
  $('#who').textContent = who;
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
  showApp('signed in');
}

async function refresh() {
  const data = await api('/v1/patients');
  patients = data.patients;
  renderAlerts();
  renderPatients();
  if (selected) await loadCharts(selected).catch((e) => { if (e.message === 'unauthorized') throw e; $('#detail-title').textContent = e.message; });
}

function scheduleRefresh() {
  if (refreshTimer) return;
  refreshTimer = setTimeout(() => { refreshTimer = null; refresh().catch(() => {}); }, 500);
}

function renderAlerts() {
  const list = $('#alerts');
  const alerts = patients.flatMap((p) => p.open_alerts);
  alerts.sort((a, b) => (a.status === 'firing' ? 0 : 1) - (b.status === 'firing' ? 0 : 1));
  list.innerHTML = alerts.length ? '' : '<li class="none">No open alerts.</li>';
  for (const a of alerts) {
    const li = document.createElement('li');
    li.className = `alert ${a.severity} ${a.status}`;
    li.dataset.id = a.alert_id;
    li.dataset.patient = a.patient_id;
    li.innerHTML = `<strong>${esc(a.title)}</strong><span class="patient">${esc(a.patient_id)}</span>
      <span class="msg">${esc(a.message)}</span><span class="since">since ${esc(a.episode_start)}</span>
      <span class="status">${esc(a.status)}</span>`;
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

function spark(values) {
  if (!values || values.length < 2) return '';
  const lo = Math.min(...values), hi = Math.max(...values), span = hi - lo || 1;
  const pts = values.map((v, i) => `${(i / (values.length - 1) * 118 + 1).toFixed(1)},${(22 - (v - lo) / span * 20).toFixed(1)}`).join(' ');
  return `<svg class="spark" viewBox="0 0 120 24"><polyline points="${pts}"/></svg>`;
}

function fmt(v, digits = 0) { return v === undefined ? '–' : Number(v.value).toFixed(digits); }

function renderPatients() {
  const body = $('#patients tbody');
  body.innerHTML = '';
  for (const p of patients) {
    const tr = document.createElement('tr');
    tr.className = 'patient' + (p.open_alerts.length ? ' has-alert' : '') + (p.patient_id === selected ? ' selected' : '');
    tr.dataset.id = p.patient_id;
    const v = p.vitals;
    tr.innerHTML = `<td>${esc(p.patient_id)}</td><td class="hr">${fmt(v.heart_rate)}</td><td class="spo2">${fmt(v.spo2)}</td>
      <td>${fmt(v.steps)}</td><td>${spark(v.heart_rate && v.heart_rate.spark)}</td>`;
    tr.onclick = () => { selected = p.patient_id; renderPatients(); loadCharts(selected); };
    body.appendChild(tr);
  }
}

function chartSvg(def, series, alerts, from, to) {
  const W = 600, H = 140, L = 34, B = 16;
  const lines = def.codes.map((c) => series.find((s) => s.code === c)).filter(Boolean);
  const all = lines.flatMap((s) => s.points.flatMap((p) => def.sum ? [p.avg * p.n] : [p.min, p.max]));
  if (!all.length) return `<svg class="chart" data-code="${def.codes[0]}" data-points="0" viewBox="0 0 ${W} ${H}"><text x="${L}" y="70">no data</text></svg>`;
  let lo = Math.min(...all), hi = Math.max(...all);
  if (hi - lo < 1) { hi += 1; lo -= 1; }
  const x = (t) => L + (Date.parse(t) - from) / (to - from) * (W - L - 4);
  const y = (v) => 4 + (hi - v) / (hi - lo) * (H - B - 8);
  let out = '';
  for (const a of alerts) {
    const x0 = Math.max(L, x(a.episode_start)), x1 = Math.min(W - 4, Math.max(x(a.episode_end), x0 + 2));
    out += `<rect class="episode" data-alert="${esc(a.alert_id)}" x="${x0.toFixed(1)}" y="2" width="${(x1 - x0).toFixed(1)}" height="${H - B - 4}"><title>${esc(a.title)}</title></rect>`;
  }
  lines.forEach((s, i) => {
    if (!def.sum) {
      const up = s.points.map((p) => `${x(p.t).toFixed(1)},${y(p.max).toFixed(1)}`);
      const down = s.points.slice().reverse().map((p) => `${x(p.t).toFixed(1)},${y(p.min).toFixed(1)}`);
      out += `<polygon class="band" points="${up.concat(down).join(' ')}"/>`;
    }
    const pts = s.points.map((p) => `${x(p.t).toFixed(1)},${y(def.sum ? p.avg * p.n : p.avg).toFixed(1)}`).join(' ');
    out += `<polyline class="${i ? 'line2' : 'line'}" points="${pts}"/>`;
    if (s.points.length < 3) {
      for (const p of s.points) out += `<circle cx="${x(p.t).toFixed(1)}" cy="${y(def.sum ? p.avg * p.n : p.avg).toFixed(1)}" r="3"/>`;
    }
  });
  out += `<text x="2" y="12">${hi.toFixed(0)}</text><text x="2" y="${H - B}">${lo.toFixed(0)}</text>`;
  out += `<text x="${L}" y="${H - 2}">${new Date(from).toLocaleTimeString()}</text><text x="${W - 60}" y="${H - 2}">${new Date(to).toLocaleTimeString()}</text>`;
  const n = lines.reduce((k, s) => k + s.points.length, 0);
  return `<svg class="chart" data-code="${def.codes[0]}" data-points="${n}" viewBox="0 0 ${W} ${H}">${out}</svg>`;
}

async function loadCharts(id) {
  const to = Date.now(), from = to - hours * 3600e3;
  const q = new URLSearchParams({ from: new Date(from).toISOString(), to: new Date(to).toISOString(), bucket: hours > 6 ? '5m' : '1m' });
  const data = await api(`/v1/patients/${encodeURIComponent(id)}/vitals?${q}`);
  if (id !== selected) return;
  $('#detail-title').textContent = id;
  $('#patient-view').dataset.patient = id;
  $('#charts').innerHTML = CHARTS.map((def) => `<div class="chart-box"><h3>${esc(def.title)}</h3>${chartSvg(def, data.series, data.alerts, from, to)}</div>`).join('');
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
  for (const it of items) {
    const p = patients.find((x) => x.patient_id === it.patient_id);
    if (!p) continue;
    const v = p.vitals[it.vital] || (p.vitals[it.vital] = { code: it.code, spark: [] });
    v.value = it.value; v.time = it.time;
  }
  if (!vitalsDirty) {
    vitalsDirty = true;
    setTimeout(() => { vitalsDirty = false; renderPatients(); }, 1000);
  }
}

$('#sso-signin').onclick = () => { if (selected) sessionStorage.setItem('carewatch-open-patient', selected); };
$('#signin-form').onsubmit = (e) => { e.preventDefault(); signIn($('#token').value); };
$('#signout').onclick = () => (sso ? ssoSignOut() : signOut(''));
document.querySelectorAll('#range button').forEach((b) => {
  b.onclick = () => {
    hours = Number(b.dataset.hours);
    document.querySelectorAll('#range button').forEach((x) => x.classList.toggle('on', x === b));
    if (selected) loadCharts(selected);
  };
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
