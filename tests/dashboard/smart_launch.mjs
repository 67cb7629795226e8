// SMART App Launch of the dashboard in Chromium (playwright-core): the EHR (simulated by the
// test identity provider, tests/oidc/provider.mjs) opens carewatch's launch URL with `iss` and
// `launch`; the person signs in on the provider's own pages; carewatch lands on the patient in
// context — or, for a patient outside the person's care teams, refuses with a page offering
// break-glass, which (with a reason) then opens the patient. A standalone launch (no `launch`;
// the EHR's patient chooser answers) lands on that patient too.
// Usage: node smart_launch.mjs <carewatch base> <artifacts dir> <cases JSON>
//   cases: [{"name", "url", "person", "patient", "expect": "open" | "refused", "reason"?}]
// Prints {"cases": {name: {...}}, "secrets": [...]} (every code, state, cookie and CSRF token
// seen, for the log check).
import { createRequire } from 'node:module';
import path from 'node:path';
import fs from 'node:fs';

const [base, outDir, casesJson] = process.argv.slice(2);
const cases = JSON.parse(casesJson);
const nodeDir = process.env.CAREWATCH_NODE_DIR || path.join(process.env.HOME, '.cache/carewatch-node');
const require = createRequire(path.join(nodeDir, 'package.json'));
const { chromium } = require('playwright-core');
fs.mkdirSync(outDir, { recursive: true });

const fail = (msg) => { console.error('FAIL: ' + msg); process.exitCode = 1; };
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const result = { cases: {}, secrets: [] };

// The provider's login page, then its consent page, until the browser is back at carewatch.
async function signIn(page, person) {
  await page.waitForSelector('input[name="login"]');
  await page.fill('input[name="login"]', person);
  await page.fill('input[name="password"]', 'any password');
  await page.click('button[type="submit"]');
  await page.waitForURL((u) => u.href.startsWith(base) || u.pathname.includes('/interaction/'));
  if (!page.url().startsWith(base)) await page.click('button[type="submit"]'); // consent
  await page.waitForURL((u) => u.href.startsWith(base) && !u.pathname.startsWith('/smart/callback'), { waitUntil: 'commit' })
    .catch(() => {});
}

async function run(c) {
  const out = {};
  const context = await browser.newContext({ viewport: { width: 1300, height: 900 } });
  const page = await context.newPage();
  page.setDefaultTimeout(20000);
  page.on('request', (r) => {
    if (!r.url().startsWith(base + '/smart/callback')) return;
    const q = new URL(r.url()).searchParams;
    for (const k of ['code', 'state']) if (q.get(k)) result.secrets.push(q.get(k));
  });
  let callbackStatus = null;
  page.on('response', (r) => { if (r.url().startsWith(base + '/smart/callback')) callbackStatus = r.status(); });
  await page.goto(c.url);
  await signIn(page, c.person);
  const view = `#patient-view[data-patient="${c.patient}"]`;
  if (c.expect === 'refused') {
    await page.waitForSelector('#refused');
    out.refused_status = callbackStatus;
    out.refused_shows_patient = (await page.content()).includes(c.patient);
    await page.screenshot({ path: path.join(outDir, `smart-${c.name}-refused.png`), fullPage: true });
    // The dashboard, opened now, does not show the patient either.
    const vitals = await page.request.get(`${base}/v1/patients/${encodeURIComponent(c.patient)}/vitals`);
    out.vitals_before = vitals.status();
    if (c.reason) {
      await page.fill('#reason', c.reason);
      await page.fill('#minutes', '30');
      await page.click('#break');
    }
  }
  if (c.expect === 'open' || c.reason) {
    await page.waitForSelector(view);
    out.landed = new URL(page.url()).searchParams.get('patient');
    out.who = await page.textContent('#who');
    await page.screenshot({ path: path.join(outDir, `smart-${c.name}.png`), fullPage: true });
  }
  const cookies = await context.cookies(base);
  const session = cookies.find((x) => x.name === '__Host-carewatch-session');
  if (session) result.secrets.push(session.value);
  const s = await page.request.get(`${base}/auth/session`);
  if (s.ok()) result.secrets.push((await s.json()).csrf);
  await context.close();
  return out;
}

try {
  for (const c of cases) {
    try {
      result.cases[c.name] = await run(c);
    } catch (e) {
      fail(`${c.name}: ${e.message}`);
    }
  }
} finally {
  console.log(JSON.stringify(result));
  await browser.close();
}
