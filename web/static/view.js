// carewatch dashboard, the patient view: summary (NEWS2, devices), the patient's alerts with
// their actions, a chart for every vital the patient has (the selected alert's own vitals
// highlighted, its episode shaded), and the alert timeline (who did what). Uses app.js's api().
'use strict';
const LABELS = {
  heart_rate: 'Heart rate', spo2: 'SpO2', respiratory_rate: 'Respiratory rate', body_temperature: 'Temperature',
  systolic: 'Blood pressure', diastolic: 'Blood pressure', body_weight: 'Weight', body_height: 'Height', bmi: 'BMI',
  steps: 'Steps', hrv: 'Heart rate variability', blood_glucose: 'Blood glucose', cgm_glucose: 'Glucose (CGM)',
};
const UNITS = { '/min': '/min', '%': '%', Cel: '°C', 'mm[Hg]': 'mmHg', 'kg/m2': 'kg/m²', '{steps}': 'steps per bucket' };
const ORDER = ['8310-5', '8867-4', '2708-6', '9279-1', '8480-6', '99504-3', '2339-0', '29463-7', '55423-8'];
const REASONS = [['false_alarm', 'False alarm'], ['contacted_patient', 'Contacted the patient'], ['escalated_to_physician', 'Escalated to a physician'],
  ['device_problem', 'Device problem'], ['condition_resolved', 'Condition resolved'], ['other', 'Other']];
const SNOOZE = [15, 30, 60, 120, 240, 480];
let hours = 1;
let focusAlert = null; // the alert whose vitals are highlighted
let alertsSig = '';
let chartsAt = 0;
let viewData = null;

/// Opens a patient's view. `quiet`: a background refresh (charts at most every 5 s).
async function openPatient(id, opts = {}) {
  const changed = id !== selected || $('#patient-view').dataset.patient !== id;
  if (changed) { selected = id; alertsSig = ''; chartsAt = 0; focusAlert = null; renderPatients(); }
  if (opts.push !== false && new URLSearchParams(window.location.search).get('patient') !== id) {
    history.pushState(null, '', `/?patient=${encodeURIComponent(id)}`);
  }
  const p = patients.find((x) => x.patient_id === id);
  const tl = api(`/v1/patients/${encodeURIComponent(id)}/timeline`);
  const charts = (!opts.quiet || Date.now() - chartsAt > 5000) ? loadCharts(id) : null;
  const timeline = await tl;
  if (id !== selected) return;
  const view = $('#patient-view');
  view.dataset.patient = id;
  $('#detail-title').textContent = `Patient ${id}`;
  renderSummary(p);
  renderPatientAlerts(p ? p.open_alerts.filter((a) => a.status !== 'pending') : []);
  renderTimeline(timeline.events);
  if (charts) await charts;
  drawCharts();
  if (opts.focus) { view.focus(); if (window.innerWidth < 800) view.scrollIntoView(); }
}

function renderSummary(p) {
  if (!p) { $('#summary').innerHTML = ''; return; }
  const n = p.news2;
  const news = n ? `<p class="news2-detail">NEWS2 <span class="news2 band-${esc(n.band)}">${n.score}</span> (${esc(n.band)}${n.partial ? `, partial: no ${esc(n.missing.join(', '))}` : ''}; ${esc(n.assumed.join(', '))})</p>`
    : '<p class="news2-detail">NEWS2: no scored vital in the last day</p>';
  const devs = p.devices.length ? p.devices.map((d) => `<li class="device${d.silent ? ' silent' : ''}" data-device="${esc(d.device_id)}">
      ${esc(d.device_id)}: last seen ${esc(ago(d.last_seen))}${d.silent ? ' <span class="badge silent">silent</span>' : ''}
      ${d.battery ? ` · battery ${Math.round(d.battery.percent)} %` : ''}</li>`).join('')
    : '<li class="muted">No registered device</li>';
  $('#summary').innerHTML = `${news}<p>Last reading ${esc(ago(p.last_data))}${p.silent ? ' <span class="badge silent">silent</span>' : ''}</p>
    <h3>Devices</h3><ul id="devices">${devs}</ul>`;
}

function actionForms(a) {
  const opt = (list) => list.map(([v, t]) => `<option value="${esc(v)}">${esc(t)}</option>`).join('');
  const open = a.status !== 'resolved';
  return `<div class="actions">
    <button type="button" class="act-ack"${a.status === 'acknowledged' ? ' disabled' : ''}>Acknowledge</button>
    <button type="button" class="act-claim">Claim</button>
    <form class="act-assign"><label>Hand off to <input name="to" required autocomplete="off"></label><button>Assign</button></form>
    <form class="act-note"><label>Note <input name="text" required autocomplete="off"></label><button>Add note</button></form>
    <form class="act-snooze"><label>Snooze for <select name="minutes">${opt(SNOOZE.map((m) => [m, m < 60 ? `${m} min` : `${m / 60} h`]))}</select></label><button>Snooze</button></form>
    <form class="act-resolve"><label>Reason <select name="reason">${opt(REASONS)}</select></label><button${open ? '' : ' disabled'}>Resolve</button></form>
  </div><p class="act-error error" role="alert"></p>`;
}

function renderPatientAlerts(alerts) {
  const sig = JSON.stringify(alerts.map((a) => [a.alert_id, a.status, a.assignee, a.snoozed_until, a.acknowledged_by, a.level]));
  if (sig === alertsSig) return;
  alertsSig = sig;
  const box = $('#patient-alerts');
  const had = box.contains(document.activeElement) && document.activeElement.closest('.patient-alert');
  const refocus = had ? [had.dataset.id, document.activeElement.className] : null;
  if (!focusAlert || !alerts.some((a) => a.alert_id === focusAlert)) focusAlert = alerts.length ? alerts[0].alert_id : null;
  box.innerHTML = alerts.length ? '<h3>Open alerts</h3>' : '<p class="muted">No open alerts for this patient.</p>';
  for (const a of alerts) {
    const art = document.createElement('article');
    art.className = `patient-alert ${a.status} level-${a.level}` + (a.alert_id === focusAlert ? ' focused' : '');
    art.dataset.id = a.alert_id;
    art.dataset.vitals = (a.vitals || []).join(',');
    const who = [a.acknowledged_by && `acknowledged by ${a.acknowledged_by}`, a.assignee && `assigned to ${a.assignee}`].filter(Boolean).join(' · ');
    art.innerHTML = `<h4><button type="button" class="show-vitals" aria-pressed="${a.alert_id === focusAlert}">${esc(a.title)}</button>
      <span class="badge level-${esc(a.level)}">${esc(a.level)}</span> <span class="status">${esc(alertStatus(a))}</span></h4>
      <p>${esc(a.message)} · since ${esc(clock(a.episode_start))}${who ? ` · ${esc(who)}` : ''}</p>${actionForms(a)}`;
    wireActions(art, a);
    box.appendChild(art);
  }
  if (refocus) {
    const el = box.querySelector(`.patient-alert[data-id="${CSS.escape(refocus[0])}"] .${CSS.escape(refocus[1].split(' ')[0] || 'show-vitals')}`);
    (el || box.querySelector('.show-vitals') || $('#patient-view')).focus();
  }
}

function wireActions(art, a) {
  const url = (verb) => `/v1/alerts/${encodeURIComponent(a.alert_id)}/${verb}`;
  const run = async (verb, body, said) => {
    art.querySelector('.act-error').textContent = '';
    try {
      await api(url(verb), { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body || {}) });
      announce(said);
      await refresh();
    } catch (e) {
      if (e.message !== 'unauthorized') art.querySelector('.act-error').textContent = e.message;
    }
  };
  art.querySelector('.show-vitals').onclick = () => { focusAlert = a.alert_id; alertsSig = ''; openPatient(selected, { quiet: false, push: false }); };
  art.querySelector('.act-ack').onclick = () => run('ack', null, `${a.title}: acknowledged`);
  art.querySelector('.act-claim').onclick = () => run('assign', {}, `${a.title}: claimed`);
  const form = (cls, fn) => { art.querySelector(cls).onsubmit = (e) => { e.preventDefault(); fn(new FormData(e.target)); }; };
  form('.act-assign', (f) => run('assign', { to: f.get('to').trim() }, `${a.title}: handed off to ${f.get('to')}`));
  form('.act-note', (f) => run('note', { text: f.get('text') }, `${a.title}: note added`));
  form('.act-snooze', (f) => run('snooze', { minutes: Number(f.get('minutes')) }, `${a.title}: snoozed for ${f.get('minutes')} min`));
  form('.act-resolve', (f) => run('resolve', { reason: f.get('reason') }, `${a.title}: resolved`));
}

const EVENTS = {
  pending: () => 'episode started', firing: () => 'raised', escalated: () => 'escalated', reassigned: () => 'moved to another care team',
  acknowledged: (e) => `acknowledged by ${e.actor || 'someone'}`,
  assigned: (e) => (e.assignee === e.actor ? `claimed by ${e.actor}` : `assigned to ${e.assignee} by ${e.actor || 'someone'}`),
  noted: (e) => `note by ${e.actor || 'someone'}: ${e.note}`,
  snoozed: (e) => `snoozed until ${clock(e.snoozed_until)} by ${e.actor || 'someone'}`,
  unsnoozed: (e) => (e.reason === 'worse_reading' ? 'back from snooze: a worse reading' : 'back from snooze: time is up'),
  resolved: (e) => (e.actor ? `resolved by ${e.actor} (${(e.reason || '').replace(/_/g, ' ')})` : 'resolved: the condition cleared'),
};

function renderTimeline(events) {
  $('#timeline-title').hidden = false;
  $('#timeline').innerHTML = events.length ? events.map((e) => `<li data-event="${esc(e.event)}" data-alert="${esc(e.alert_id)}">
    <time datetime="${esc(e.at)}">${esc(new Date(e.at).toLocaleString())}</time> <strong>${esc(e.title)}</strong>
    ${esc((EVENTS[e.event] || (() => e.event))(e))}</li>`).join('') : '<li class="muted">No alerts yet.</li>';
}

function chartDefs(series) {
  const defs = [];
  const codes = series.map((s) => s.code).sort((a, b) => ((ORDER.indexOf(a) + 1 || 99) - (ORDER.indexOf(b) + 1 || 99)));
  for (const code of codes) {
    if (code === '8462-4' && codes.includes('8480-6')) continue;
    const s = series.find((x) => x.code === code);
    if (code === '8480-6' || code === '8462-4') { defs.push({ key: 'blood_pressure', title: 'Blood pressure (mmHg)', codes: ['8480-6', '8462-4'] }); continue; }
    const unit = UNITS[s.unit] || s.unit || '';
    defs.push({ key: s.key || code, title: `${LABELS[s.key] || s.key || code}${unit ? ` (${unit})` : ''}`, codes: [code], sum: code === '55423-8' });
  }
  return defs;
}

function chartSvg(def, series, alerts, from, to) {
  const W = 600, H = 140, L = 34, B = 16;
  const lines = def.codes.map((c) => series.find((s) => s.code === c)).filter(Boolean);
  const all = lines.flatMap((s) => s.points.flatMap((p) => (def.sum ? [p.avg * p.n] : [p.min, p.max])));
  const label = `${def.title} chart`;
  if (!all.length) return `<svg class="chart" data-code="${def.codes[0]}" data-points="0" viewBox="0 0 ${W} ${H}" role="img" aria-label="${esc(label)}"><text x="${L}" y="70">no data</text></svg>`;
  let lo = Math.min(...all), hi = Math.max(...all);
  if (hi - lo < 1) { hi += 1; lo -= 1; }
  const x = (t) => L + (Date.parse(t) - from) / (to - from) * (W - L - 4);
  const y = (v) => 4 + (hi - v) / (hi - lo) * (H - B - 8);
  let out = '';
  for (const a of alerts.filter((a) => !(a.vitals || []).length || a.vitals.some((c) => def.codes.includes(c)))) {
    const x0 = Math.max(L, x(a.episode_start)), x1 = Math.min(W - 4, Math.max(x(a.episode_end), x0 + 2));
    out += `<rect class="episode" data-alert="${esc(a.alert_id)}" x="${x0.toFixed(1)}" y="2" width="${(x1 - x0).toFixed(1)}" height="${H - B - 4}"><title>${esc(a.title)}</title></rect>`;
  }
  lines.forEach((s, i) => {
    const val = (p) => (def.sum ? p.avg * p.n : p.avg);
    if (!def.sum) {
      const up = s.points.map((p) => `${x(p.t).toFixed(1)},${y(p.max).toFixed(1)}`);
      const down = s.points.slice().reverse().map((p) => `${x(p.t).toFixed(1)},${y(p.min).toFixed(1)}`);
      out += `<polygon class="band" points="${up.concat(down).join(' ')}"/>`;
    }
    out += `<polyline class="${i ? 'line2' : 'line'}" points="${s.points.map((p) => `${x(p.t).toFixed(1)},${y(val(p)).toFixed(1)}`).join(' ')}"/>`;
    if (s.points.length < 3) for (const p of s.points) out += `<circle cx="${x(p.t).toFixed(1)}" cy="${y(val(p)).toFixed(1)}" r="3"/>`;
  });
  out += `<text x="2" y="12">${hi.toFixed(0)}</text><text x="2" y="${H - B}">${lo.toFixed(0)}</text>`;
  out += `<text x="${L}" y="${H - 2}">${new Date(from).toLocaleTimeString()}</text><text x="${W - 60}" y="${H - 2}">${new Date(to).toLocaleTimeString()}</text>`;
  const n = lines.reduce((k, s) => k + s.points.length, 0);
  return `<svg class="chart" data-code="${def.codes[0]}" data-points="${n}" viewBox="0 0 ${W} ${H}" role="img" aria-label="${esc(label)}">${out}</svg>`;
}

async function loadCharts(id) {
  chartsAt = Date.now();
  const to = Date.now(), from = to - hours * 3600e3;
  const q = new URLSearchParams({ from: new Date(from).toISOString(), to: new Date(to).toISOString(), bucket: hours > 6 ? '5m' : '1m' });
  const data = await api(`/v1/patients/${encodeURIComponent(id)}/vitals?${q}`);
  if (id !== selected) return;
  viewData = { data, from, to };
  drawCharts();
}

function drawCharts() {
  if (!viewData) return;
  const { data, from, to } = viewData;
  const p = patients.find((x) => x.patient_id === selected);
  const open = p ? p.open_alerts : [];
  const vitalsOf = (a) => (open.find((o) => o.alert_id === a.alert_id) || {}).vitals || [];
  const alerts = data.alerts.map((a) => ({ ...a, vitals: vitalsOf(a) }));
  const hot = (open.find((a) => a.alert_id === focusAlert) || {}).vitals || [];
  const defs = chartDefs(data.series);
  $('#charts').innerHTML = defs.length ? defs.map((def) => {
    const alerted = def.codes.some((c) => hot.includes(c));
    return `<figure class="chart-box${alerted ? ' alerted' : ''}" data-vital="${esc(def.key)}"><figcaption>${esc(def.title)}${alerted ? ' <span class="badge level-urgent">alert</span>' : ''}</figcaption>${chartSvg(def, data.series, alerts, from, to)}</figure>`;
  }).join('') : '<p class="muted">No readings in this range.</p>';
}

document.querySelectorAll('#range button').forEach((b) => {
  b.onclick = () => {
    hours = Number(b.dataset.hours);
    document.querySelectorAll('#range button').forEach((x) => { x.classList.toggle('on', x === b); x.setAttribute('aria-pressed', String(x === b)); });
    if (selected) loadCharts(selected);
  };
});
