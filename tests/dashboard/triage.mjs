// Drives Debian's Chromium with playwright-core through a care manager's shift on the triage
// dashboard: sign in through the identity provider, check the triage order, open the fever
// patient with the keyboard and see the temperature chart with the episode, snooze, see a
// worse reading break through, hand off to a colleague, note, resolve with a reason — every
// action by keyboard. axe-core checks the list and the patient view (desktop and phone); the
// phone layout must not scroll sideways. Screenshots go to the artifacts directory.
// Usage: node triage.mjs <base url> <person> <artifacts dir> <fever patient> <foreign patient>
//        <fever device> <fever device secret>
import { createRequire } from 'node:module';
import path from 'node:path';
import fs from 'node:fs';

const [base, person, outDir, patient, foreign, device, secret] = process.argv.slice(2);
const nodeDir = process.env.CAREWATCH_NODE_DIR || path.join(process.env.HOME, '.cache/carewatch-node');
const require = createRequire(path.join(nodeDir, 'package.json'));
const { chromium } = require('playwright-core');
const axeSource = fs.readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');
fs.mkdirSync(outDir, { recursive: true });

const fail = (msg) => { console.error('FAIL: ' + msg); process.exitCode = 1; };
const result = { axe: {} };
const shot = (page, name) => page.screenshot({ path: path.join(outDir, `triage-${name}.png`), fullPage: true });

// axe-core on the page as it stands: WCAG 2 A/AA rules; serious and critical violations.
async function axe(page, name) {
  await page.addScriptTag({ content: axeSource });
  const r = await page.evaluate(() => window.axe.run(document, { runOnly: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'best-practice'] }));
  const bad = r.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
  result.axe[name] = bad.map((v) => `${v.id}: ${v.nodes.map((n) => n.target.join(' ')).join(', ')}`);
  result.axe[name + '_rules_passed'] = r.passes.length;
}

const order = (page) => page.$$eval('#patients tr.patient', (rows) => rows.map((r) => r.dataset.id));
const alertBox = (id) => `.patient-alert[data-id="${id}"]`;

// Tabs from the top of the page (the skip link) until `selector` has focus; the number of presses, or -1.
async function tabTo(page, selector, max = 120) {
  await page.focus('a.skip');
  for (let i = 1; i <= max; i++) {
    await page.keyboard.press('Tab');
    if (await page.evaluate((s) => document.activeElement && document.activeElement.matches(s), selector)) return i;
  }
  return -1;
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
try {
  const context = await browser.newContext({ viewport: { width: 1400, height: 1000 } });
  const page = await context.newPage();
  page.setDefaultTimeout(20000);
  await page.goto(base + '/');
  await page.click('#sso-signin');
  await page.waitForSelector('input[name="login"]');
  await page.fill('input[name="login"]', person);
  await page.fill('input[name="password"]', 'any password');
  await page.click('button[type="submit"]');
  await page.waitForURL((u) => u.href.startsWith(base) || u.pathname.includes('/interaction/'));
  if (!page.url().startsWith(base)) await page.click('button[type="submit"]'); // consent
  await page.waitForSelector(`tr.patient[data-id="${patient}"]`);
  result.who = await page.textContent('#who');
  result.order = await order(page);
  if (result.order.includes(foreign)) fail('another team\'s patient is listed');
  await page.waitForSelector('#live:not(.off)');
  await shot(page, 'list-desktop');
  await axe(page, 'list_desktop');

  // Open the fever patient from the list with the keyboard.
  result.tabs_to_patient = await tabTo(page, `tr.patient[data-id="${patient}"] a.open`);
  await page.keyboard.press('Enter');
  await page.waitForSelector(`#patient-view[data-patient="${patient}"]`);
  const first = await page.waitForSelector('.patient-alert.firing');
  const alertId = await first.getAttribute('data-id');
  result.alert_id = alertId;
  result.url = page.url();
  // The temperature chart, highlighted as the alert's own vital, with the episode shaded.
  await page.waitForSelector(`figure.chart-box.alerted[data-vital="body_temperature"] svg.chart[data-code="8310-5"]:not([data-points="0"]) rect.episode[data-alert="${alertId}"]`);
  result.charts = await page.$$eval('figure.chart-box', (f) => f.map((x) => x.dataset.vital));
  result.highlighted = await page.$$eval('figure.chart-box.alerted', (f) => f.map((x) => x.dataset.vital));
  result.devices = await page.$$eval('#devices li.device', (l) => l.map((x) => x.textContent.replace(/\s+/g, ' ').trim()));
  // Every action is reachable with Tab.
  result.tabs = {};
  for (const c of ['.act-ack', '.act-claim', '.act-assign input', '.act-note input', '.act-snooze select', '.act-resolve select', '.act-resolve button']) {
    result.tabs[c] = await tabTo(page, `${alertBox(alertId)} ${c}`, 200);
  }
  await axe(page, 'patient_desktop');
  await shot(page, 'patient-desktop');

  // Snooze for 30 minutes: the patient no longer heads the list.
  await page.focus(`${alertBox(alertId)} .act-snooze select`);
  await page.selectOption(`${alertBox(alertId)} .act-snooze select`, '30');
  await page.keyboard.press('Tab'); // to the Snooze button
  await page.keyboard.press('Enter');
  await page.waitForSelector(`${alertBox(alertId)}.snoozed`);
  await page.waitForFunction((p) => document.querySelector('#patients tr.patient').dataset.id !== p, patient);
  result.order_snoozed = await order(page);

  // A worse reading from the patient's device breaks through the snooze.
  const r = await fetch(`${base}/v1/readings`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${secret}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({ device_id: device, time: new Date(Date.now() - 5000).toISOString(), body_temperature: 40.6 }),
  });
  result.worse_reading = r.status;
  await page.waitForSelector(`${alertBox(alertId)}.firing`, { timeout: 30000 });
  await page.waitForSelector('#timeline li[data-event="unsnoozed"]');
  result.order_broken_through = await order(page);

  // Hand off to a colleague, note, resolve with a reason: typed and submitted with Enter.
  await page.focus(`${alertBox(alertId)} .act-assign input`);
  await page.keyboard.type('Erin Nurse');
  await page.keyboard.press('Enter');
  await page.waitForSelector('#timeline li[data-event="assigned"]');
  await page.waitForFunction((s) => document.querySelector(s).textContent.includes('assigned to Erin Nurse'), alertBox(alertId));
  await page.focus(`${alertBox(alertId)} .act-note input`);
  await page.keyboard.type('Called the patient: 40.6 on a second thermometer.');
  await page.keyboard.press('Enter');
  await page.waitForSelector('#timeline li[data-event="noted"]');
  // Phone width: the deep link opens the patient; nothing scrolls sideways.
  const phone = await context.newPage();
  await phone.setViewportSize({ width: 390, height: 844 });
  phone.setDefaultTimeout(20000);
  await phone.goto(base + '/');
  await phone.waitForSelector(`tr.patient[data-id="${patient}"]`);
  result.phone_list_width = await phone.evaluate(() => document.documentElement.scrollWidth);
  await shot(phone, 'list-phone');
  await axe(phone, 'list_phone');
  await phone.goto(`${base}/?patient=${encodeURIComponent(patient)}`);
  await phone.waitForSelector(`#patient-view[data-patient="${patient}"] figure.chart-box`);
  await phone.waitForSelector(`${alertBox(alertId)} .act-resolve select`);
  await phone.evaluate(() => document.querySelector('#patient-view').scrollIntoView());
  result.phone_view_width = await phone.evaluate(() => document.documentElement.scrollWidth);
  await phone.screenshot({ path: path.join(outDir, 'triage-patient-phone.png'), fullPage: true });
  await axe(phone, 'patient_phone');
  await phone.close();
  await page.focus(`${alertBox(alertId)} .act-resolve select`);
  await page.selectOption(`${alertBox(alertId)} .act-resolve select`, 'escalated_to_physician');
  await page.keyboard.press('Tab'); // to the Resolve button
  await page.keyboard.press('Enter');
  await page.waitForSelector('#timeline li[data-event="resolved"]');
  await page.waitForFunction((s) => !document.querySelector(s), alertBox(alertId));
  result.timeline = await page.$$eval(`#timeline li[data-alert="${alertId}"]`, (l) => l.map((x) => x.dataset.event).reverse());
  result.timeline_text = await page.$$eval('#timeline li', (l) => l.map((x) => x.textContent.replace(/\s+/g, ' ').trim()));
  await shot(page, 'patient-resolved-desktop');

  console.log(JSON.stringify(result));
} catch (e) {
  fail(e.message);
  console.log(JSON.stringify(result));
} finally {
  await browser.close();
}
