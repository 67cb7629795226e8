// Drives Debian's Chromium with playwright-core through the dashboard as a care manager:
// sign in, see the patient list (and not another team's patient), open a patient's charts,
// see the injected alert, acknowledge it. Screenshots go to the artifacts directory.
// Usage: node e2e.mjs <base url> <care-manager token> <artifacts dir> <alerted patient> <other team's patient>
import { createRequire } from 'node:module';
import path from 'node:path';
import fs from 'node:fs';

const [base, token, outDir, patient, foreign] = process.argv.slice(2);
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
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
  page.setDefaultTimeout(20000);
  await page.goto(base + '/');
  // A wrong token is refused.
  await page.fill('#token', 'cw_not-a-token');
  await page.click('#signin');
  await page.waitForFunction(() => document.querySelector('#signin-error').textContent.length > 0);
  await page.fill('#token', token);
  await page.click('#signin');
  await page.waitForSelector(`tr.patient[data-id="${patient}"]`);
  if (await page.$(`tr.patient[data-id="${foreign}"]`)) fail('another team\'s patient is listed');
  const alert = await page.waitForSelector(`.alert[data-patient="${patient}"].firing`);
  const alertId = await alert.getAttribute('data-id');
  await page.waitForSelector('#live:not(.off)');
  await page.click(`tr.patient[data-id="${patient}"]`);
  await page.waitForSelector('svg.chart[data-code="8867-4"]:not([data-points="0"])');
  await page.waitForSelector(`svg.chart rect.episode[data-alert="${alertId}"]`);
  const spark = await page.$$eval('svg.spark polyline', (l) => l.length);
  if (spark < 1) fail('no sparkline');
  await page.screenshot({ path: path.join(outDir, 'dashboard-alert.png'), fullPage: true });
  await page.click(`.alert[data-id="${alertId}"] button.ack`);
  await page.waitForSelector(`.alert[data-id="${alertId}"].acknowledged`);
  await page.screenshot({ path: path.join(outDir, 'dashboard-acknowledged.png'), fullPage: true });
  // A deep link opens that patient's view (the token is kept for the tab).
  await page.goto(`${base}/?patient=${encodeURIComponent(patient)}`);
  await page.waitForSelector(`#patient-view[data-patient="${patient}"] svg.chart[data-code="8867-4"]:not([data-points="0"])`);
  console.log(JSON.stringify({ alert_id: alertId, sparklines: spark }));
} catch (e) {
  fail(e.message);
} finally {
  await browser.close();
}
