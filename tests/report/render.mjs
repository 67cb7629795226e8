// Opens the alarm-burden report (a local file, no server) in Debian's Chromium with
// playwright-core, checks it loaded nothing from elsewhere, takes a full-page screenshot, and
// prints every number the page shows as JSON: {"<data-metric>": "<text>", …}.
// Usage: node render.mjs <report.html> <screenshot.png>
import { createRequire } from 'node:module';
import path from 'node:path';
import fs from 'node:fs';
import { pathToFileURL } from 'node:url';

const [file, shot] = process.argv.slice(2);
const nodeDir = process.env.CAREWATCH_NODE_DIR || path.join(process.env.HOME, '.cache/carewatch-node');
const require = createRequire(path.join(nodeDir, 'package.json'));
const { chromium } = require('playwright-core');
fs.mkdirSync(path.dirname(shot), { recursive: true });

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
try {
  const page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
  const url = pathToFileURL(path.resolve(file)).href;
  const elsewhere = [];
  page.on('request', (r) => { if (r.url() !== url) elsewhere.push(r.url()); });
  await page.goto(url);
  await page.waitForSelector('#sweep svg circle');
  await page.screenshot({ path: shot, fullPage: true });
  const metrics = await page.$$eval('[data-metric]', (els) =>
    Object.fromEntries(els.map((e) => [e.getAttribute('data-metric'), e.textContent.trim()])));
  const charts = await page.$$eval('svg', (s) => s.length);
  const visible = await page.$eval('#sweep', (e) => e.getBoundingClientRect().height > 0);
  console.log(JSON.stringify({ metrics, charts, visible, elsewhere }));
} finally {
  await browser.close();
}
