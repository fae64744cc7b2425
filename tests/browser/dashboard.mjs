// The dashboard in a real browser: Debian's Chromium, headless, driven by playwright-core.
// tests/python/test_dashboard.py starts the gateway and runs this with:
//   ADMIN=127.0.0.1:port HTTP=127.0.0.1:port K6=path/to/k6 SCREENSHOT=path node dashboard.mjs
// Every step asserts; the first failure exits non-zero with what was seen.
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { chromium } from 'playwright-core';

const { ADMIN, HTTP, K6, SCREENSHOT, REPO } = process.env;
const admin = `http://${ADMIN}`;
const step = (what) => console.log(`dashboard: ${what}`);

function fail(why) {
  throw new Error(why);
}

async function until(what, cond, timeoutMs = 15000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await cond();
    if (value) return value;
    if (Date.now() > deadline) fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

function invoke(sid) {
  const out = execFileSync('curl', ['-s', '-m', '30', '-w', '\n%{http_code}', '-X', 'POST',
    `http://${HTTP}/invocations`, '-H', 'Content-Type: application/json',
    '-H', `X-Amzn-Bedrock-AgentCore-Runtime-Session-Id: ${sid}`, '-d', '{"prompt":"hi"}']).toString();
  const status = out.trim().split('\n').pop();
  if (status !== '200') fail(`invoke ${sid}: ${out}`);
}

async function sessions() {
  const r = await fetch(`${admin}/sessions`);
  return (await r.json()).sessions;
}

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking'],
});
try {
  const page = await browser.newPage({ viewport: { width: 1366, height: 900 } });
  const elsewhere = [];
  page.on('request', (r) => { if (!r.url().startsWith(admin)) elsewhere.push(r.url()); });
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  page.on('dialog', (d) => d.accept());

  step('the page loads from the admin listener');
  await page.goto(`${admin}/dashboard`);
  await page.getByRole('heading', { name: /Sessions/ }).waitFor();
  await page.locator('#no-sessions').waitFor();

  step('two sessions started with curl appear without a reload');
  const stamp = Date.now().toString(36);
  const [a, b] = [`dash-a-${stamp}-0123456789abcdefghij`, `dash-b-${stamp}-0123456789abcdefghij`];
  invoke(a);
  invoke(b);
  await page.locator(`tr[data-session-id="${a}"]`).waitFor();
  await page.locator(`tr[data-session-id="${b}"]`).waitFor();
  const rowA = page.locator(`tr[data-session-id="${a}"]`);
  const rowText = await rowA.innerText();
  for (const want of ['default v1', 'anonymous', 'process', 'idle']) {
    if (!rowText.includes(want)) fail(`row of ${a} lacks "${want}": ${rowText}`);
  }
  if (!/\d+ B/.test(rowText)) fail(`row of ${a} shows no bytes: ${rowText}`);

  step('the filter narrows the table');
  await page.getByLabel('Filter').fill('dash-b');
  await until('the filter to hide session a', async () => (await rowA.count()) === 0);
  await page.getByLabel('Filter').fill('');
  await rowA.waitFor();

  step("a session's details show its requests and health checks");
  await page.getByRole('button', { name: `Show session ${b}` }).click();
  await page.locator('#detail').waitFor();
  await until('a request in the detail', async () =>
    (await page.locator('#detail-requests tbody tr').count()) > 0);
  const req = await page.locator('#detail-requests tbody tr').first().innerText();
  if (!req.includes('invocations') || !req.includes('200')) fail(`detail request row: ${req}`);
  await until('a health check in the detail', async () =>
    (await page.locator('#detail-checks tbody tr').count()) > 0, 20000);
  await page.getByRole('button', { name: "Close the session's details" }).click();

  step('Stop (after its confirmation) ends the session and its backend process');
  const listed = (await sessions()).find((s) => s.id === a);
  const pid = Number((listed.backend || '').replace('process ', ''));
  if (!pid || !existsSync(`/proc/${pid}`)) fail(`no live backend process for ${a}: ${JSON.stringify(listed)}`);
  await page.getByRole('button', { name: `Stop session ${a}` }).click();
  await rowA.waitFor({ state: 'detached' });
  await until(`backend process ${pid} to end`, async () => !existsSync(`/proc/${pid}`));
  if ((await sessions()).some((s) => s.id === a)) fail(`${a} still listed by the API`);
  await page.locator(`tr[data-session-id="${b}"]`).waitFor();

  step('the runtimes and the config in force are shown');
  const runtimes = await page.locator('#runtimes tbody').innerText();
  if (!runtimes.includes('default') || !runtimes.includes('process')) fail(`runtimes: ${runtimes}`);
  await until('the config text', async () => (await page.locator('#config-text').textContent()).includes('[[runtimes]]'));

  step('the graphs move under a short k6 run');
  const total = async () => Number(await page.locator('#chart-requests').getAttribute('data-total'));
  const points = async () => page.locator('#chart-requests polyline').first().getAttribute('points');
  const before = await total();
  const pointsBefore = await points();
  execFileSync(K6, ['run', '-q', '-e', `HTTP_URL=http://${HTTP}`, '-e', 'VUS=4', '-e', 'DURATION=4s',
    `${REPO}/loadtest/invoke.js`], { stdio: 'inherit' });
  await until('the request graph to count the k6 run', async () => (await total()) >= before + 100, 20000);
  if ((await points()) === pointsBefore) fail('the request graph did not change');
  const latency = await page.locator('#chart-latency output').innerText();
  if (!/p50 [\d.]+ ms/.test(latency)) fail(`latency caption: ${latency}`);

  step('every control has an accessible name; nothing came from elsewhere; no script errors');
  const unnamed = await page.locator('button').evaluateAll((bs) =>
    bs.filter((b) => !(b.getAttribute('aria-label') || b.textContent).trim()).length);
  if (unnamed) fail(`${unnamed} buttons without a name`);
  if (elsewhere.length) fail(`fetched from elsewhere: ${elsewhere}`);
  if (errors.length) fail(`script errors: ${errors}`);

  await page.screenshot({ path: SCREENSHOT, fullPage: true });
  step(`ok; screenshot ${SCREENSHOT}`);
} finally {
  await browser.close();
}
