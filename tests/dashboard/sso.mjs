// Drives Debian's Chromium with playwright-core through the dashboard's single sign-on: the
// page offers only the identity provider's sign-in (no token paste), the person signs in on
// the provider's own login page, sees their teams' patients only, acknowledges an alert, and
// a state-changing call without the CSRF token is refused; sign-out goes through the
// provider's logout, and the old session cookie is refused afterwards.
// Usage: node sso.mjs <base url> <person> <artifacts dir> <alerted patient> <other team's patient>
import { createRequire } from 'node:module';
import path from 'node:path';
import fs from 'node:fs';

const [base, person, outDir, patient, foreign] = process.argv.slice(2);
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
const result = {};
try {
  const context = await browser.newContext({ viewport: { width: 1400, height: 1000 } });
  const page = await context.newPage();
  page.setDefaultTimeout(20000);
  // Every secret of the flow, for the log check (none may appear in carewatch's logs).
  result.secrets = [];
  page.on('request', (r) => {
    if (!r.url().startsWith(base + '/auth/callback')) return;
    const q = new URL(r.url()).searchParams;
    for (const k of ['code', 'state']) if (q.get(k)) result.secrets.push(q.get(k));
  });
  await page.goto(base + '/');
  await page.waitForSelector('#sso-signin');
  if (await page.isVisible('#token')) fail('token paste is offered although an issuer is configured');
  await page.click('#sso-signin');
  // The provider's own login page (oidc-provider's interactions), then its consent page.
  await page.waitForSelector('input[name="login"]');
  await page.fill('input[name="login"]', person);
  await page.fill('input[name="password"]', 'any password');
  await page.click('button[type="submit"]');
  await page.waitForURL((u) => u.href.startsWith(base) || u.pathname.includes('/interaction/'));
  if (!page.url().startsWith(base)) {
    await page.click('button[type="submit"]'); // consent: Continue
  }
  await page.waitForSelector(`tr.patient[data-id="${patient}"]`);
  result.who = await page.textContent('#who');
  if (await page.$(`tr.patient[data-id="${foreign}"]`)) fail('another team\'s patient is listed');
  const cookies = await context.cookies(base);
  const session = cookies.find((c) => c.name === '__Host-carewatch-session');
  if (!session) fail('no session cookie');
  else if (!session.httpOnly || !session.secure || session.sameSite !== 'Lax') fail('cookie attributes');
  if (session) result.secrets.push(session.value);
  result.secrets.push(await page.evaluate('csrf'));
  const alert = await page.waitForSelector(`.alert[data-patient="${patient}"].firing`);
  const alertId = await alert.getAttribute('data-id');
  result.alert_id = alertId;
  // A forged cross-site style call: the cookie alone is not enough to change anything.
  const forged = await page.request.post(`${base}/v1/alerts/${encodeURIComponent(alertId)}/ack`);
  result.without_csrf = forged.status();
  await page.waitForSelector('#live:not(.off)');
  await page.screenshot({ path: path.join(outDir, 'sso-signed-in.png'), fullPage: true });
  await page.click(`.alert[data-id="${alertId}"] button.ack`);
  await page.waitForSelector(`.alert[data-id="${alertId}"].acknowledged`);
  // Sign out: carewatch, then the provider's logout confirmation, then back to carewatch.
  await page.click('#signout');
  await page.waitForSelector('button[name="logout"][value="yes"]');
  await page.click('button[name="logout"][value="yes"]');
  await page.waitForURL((u) => u.href.startsWith(base));
  await page.waitForSelector('#sso-signin');
  result.signed_out_visible = await page.isVisible('#sso-panel');
  // The old cookie, replayed, no longer opens anything.
  if (session) await context.addCookies([session]);
  const after = await page.request.get(`${base}/v1/patients`);
  result.after_sign_out = after.status();
  await page.screenshot({ path: path.join(outDir, 'sso-signed-out.png'), fullPage: true });
  console.log(JSON.stringify(result));
} catch (e) {
  fail(e.message);
  console.log(JSON.stringify(result));
} finally {
  await browser.close();
}
