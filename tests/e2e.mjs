// End-to-end tests of the slm web app in headless Chromium (Debian's package), driven by
// playwright-core. Run through `cargo xtask browser-tests`, which builds the app, starts a
// test-mode server (request log at /__log, `?cut=N` drops a download after N bytes) and sets
// SLM_URL. Each scenario uses a fresh browser profile.
import { chromium } from 'playwright-core';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import assert from 'node:assert/strict';

const BASE = process.env.SLM_URL || 'http://127.0.0.1:8080/';
const CHROME = process.env.CHROMIUM || '/usr/lib/chromium/chromium';
const MODEL_FILE = 'SmolLM2-135M-Instruct.Q4_1.gguf';
const MODEL_SHA = 'b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53';
const QUESTION = 'What color is the sky on a clear day?';
const LONG = 240_000;
const only = process.argv[2] || process.env.SLM_E2E_ONLY;

function log(...a) { console.log('[e2e]', ...a); }

async function serverLog() {
  const r = await fetch(new URL('__log', BASE));
  return (await r.text()).split('\n').filter(Boolean);
}

async function launch({ webgpu }) {
  const dir = mkdtempSync(join(tmpdir(), 'slm-e2e-'));
  const args = ['--no-sandbox', '--disable-background-networking', '--disable-component-update',
    '--disable-sync', '--no-first-run', '--headless=new'];
  if (webgpu) args.push('--enable-unsafe-webgpu');
  const ctx = await chromium.launchPersistentContext(dir, { executablePath: CHROME, headless: true, args });
  const requests = [];
  ctx.on('request', (r) => requests.push(r.url()));
  const page = ctx.pages()[0] || await ctx.newPage();
  const dialogs = [];
  page.on('dialog', (d) => { dialogs.push(d.message()); d.dismiss().catch(() => {}); });
  page.on('console', (m) => { if (m.type() === 'error') log('console.error:', m.text()); });
  page.on('pageerror', (e) => log('pageerror:', e.message));
  const close = async () => { await ctx.close(); rmSync(dir, { recursive: true, force: true }); };
  return { ctx, page, requests, dialogs, close };
}

async function open(page) {
  const resp = await page.goto(BASE);
  const h = resp.headers();
  assert.equal(h['cross-origin-opener-policy'], 'same-origin');
  assert.equal(h['cross-origin-embedder-policy'], 'require-corp');
  assert.match(h['content-security-policy'], /connect-src 'self'/);
  await page.getByTestId('model-select').waitFor();
  assert.equal(await page.evaluate(() => crossOriginIsolated), true, 'page is cross-origin isolated');
}

/// Click download and wait until the model is loaded; returns the progress values seen.
async function downloadAndLoad(page) {
  await page.getByTestId('download-button').click();
  const seen = new Set();
  const t0 = Date.now();
  while (Date.now() - t0 < LONG) {
    const p = page.getByTestId('download-progress');
    if (await p.count()) seen.add(Number(await p.getAttribute('value')));
    if (await page.getByTestId('prompt-input').isEnabled().catch(() => false)) break;
    if (await page.getByTestId('error-banner').first().isVisible().catch(() => false)) {
      throw new Error('error banner: ' + await page.getByTestId('error-banner').first().innerText());
    }
    await page.waitForTimeout(100);
  }
  assert.ok(await page.getByTestId('prompt-input').isEnabled(), 'prompt input enabled after load');
  return [...seen].sort((a, b) => a - b);
}

async function settings(page, { temperature, maxTokens }) {
  await page.locator('details.settings summary').click();
  await page.getByTestId('temperature').fill(String(temperature));
  await page.getByTestId('temperature').dispatchEvent('change');
  await page.getByTestId('max-tokens').fill(String(maxTokens));
  await page.getByTestId('max-tokens').dispatchEvent('change');
}

/// Send a prompt; check the reply streams; return its text and stats line.
async function ask(page, text) {
  const before = await page.getByTestId('assistant-message').count();
  await page.getByTestId('prompt-input').fill(text);
  await page.getByTestId('send-button').click();
  await page.getByTestId('stop-button').waitFor({ timeout: 10_000 });
  // Streaming: the reply element exists and grows while the stop button is shown.
  const lengths = [];
  const t0 = Date.now();
  while (Date.now() - t0 < LONG) {
    const n = await page.getByTestId('assistant-message').count();
    if (n > before) lengths.push((await page.getByTestId('assistant-message').nth(before).innerText()).length);
    if (!(await page.getByTestId('stop-button').isVisible().catch(() => false))) break;
    await page.waitForTimeout(50);
  }
  await page.getByTestId('send-button').waitFor({ timeout: LONG });
  const reply = await page.getByTestId('assistant-message').nth(before).innerText();
  const stats = await page.getByTestId('reply-stats').last().innerText();
  const distinct = new Set(lengths).size;
  return { reply, stats, distinct };
}

async function mainFlow() {
  log('main flow: download → reload → load from IndexedDB → chat (WebGPU flag on, backend auto)');
  const b = await launch({ webgpu: true });
  try {
    await open(b.page);
    const selected = await b.page.getByTestId('model-select').inputValue();
    assert.equal(selected, 'smollm2-135m-instruct-q4_1');
    // The default backend is auto; with SwiftShader's WebGPU the CPU is much faster, so the
    // test picks the CPU unless SLM_E2E_BACKEND says otherwise.
    const backend = process.env.SLM_E2E_BACKEND || 'cpu';
    await b.page.getByTestId('backend-select').selectOption(backend);
    const seen = await downloadAndLoad(b.page);
    log('progress values seen:', seen.length, 'max', Math.max(...seen));
    assert.ok(seen.length >= 2 && Math.max(...seen) >= 99.9, 'progress bar moved to 100%');
    assert.ok(b.requests.some((u) => u.includes(MODEL_FILE)), 'model fetched from the network once');
    log('badge:', await b.page.getByTestId('backend-badge').innerText());

    // Reload: the model comes from IndexedDB, with no request for the model file.
    const mark = (await serverLog()).length;
    b.requests.length = 0;
    await b.page.reload();
    await b.page.getByTestId('model-select').waitFor();
    await b.page.getByTestId('backend-select').selectOption(backend);
    await b.page.waitForFunction(() => document.querySelector('[data-testid=download-button]')?.textContent.includes('Load'));
    await downloadAndLoad(b.page);
    const modelReqs = b.requests.filter((u) => u.includes(MODEL_FILE));
    const serverModelReqs = (await serverLog()).slice(mark).filter((l) => l.includes(MODEL_FILE));
    assert.deepEqual(modelReqs, [], 'no browser request for the model after reload');
    assert.deepEqual(serverModelReqs, [], 'no server request for the model after reload');
    log('reload: loaded from IndexedDB with zero model requests;', await b.page.getByTestId('model-ready').innerText());

    // Chat: no network request at all.
    await settings(b.page, { temperature: 0, maxTokens: backend === 'gpu' ? 16 : 48 });
    const mark2 = (await serverLog()).length;
    b.requests.length = 0;
    const r = await ask(b.page, QUESTION);
    log('reply:', JSON.stringify(r.reply));
    log('stats:', r.stats, '| streamed updates:', r.distinct);
    assert.ok(r.reply.trim().length > 0, 'non-empty reply');
    assert.ok(r.distinct >= 2, 'reply streamed in several steps');
    assert.match(r.reply.toLowerCase(), /blue/, 'the sky is blue');
    // The same text `slm generate` prints natively for this prompt (up to its first near-tie).
    const expect = process.env.SLM_E2E_EXPECT_PREFIX;
    if (expect) assert.ok(r.reply.trim().startsWith(expect), `reply starts with slm's ${JSON.stringify(expect)}`);
    assert.deepEqual(b.requests, [], 'no browser request while chatting');
    assert.deepEqual((await serverLog()).slice(mark2), [], 'no server request while chatting');
    assert.equal(await b.page.getByTestId('assistant-message').count(), 1, 'one assistant message per reply');
    if (process.env.SLM_E2E_SCREENSHOT) await b.page.screenshot({ path: process.env.SLM_E2E_SCREENSHOT, fullPage: true });
  } finally {
    await b.close();
  }
}

async function resumeFlow() {
  log('CPU without WebGPU: a cut download resumes with Range, then chat');
  const b = await launch({ webgpu: false });
  try {
    await open(b.page);
    const url = `models/${MODEL_FILE}?cut=30000000`;
    await b.page.locator('details.add-model summary').click();
    await b.page.getByTestId('add-url').fill(url);
    await b.page.getByTestId('add-sha256').fill(MODEL_SHA);
    await b.page.getByTestId('add-url-button').click();
    await b.page.getByTestId('download-button').click();
    await b.page.getByTestId('error-banner').first().waitFor({ timeout: LONG });
    log('cut:', await b.page.getByTestId('error-banner').first().innerText());
    assert.ok(await b.page.getByTestId('prompt-input').isDisabled(), 'not usable after a cut download');
    await b.page.getByTestId('stored-models').getByText('partial').waitFor();
    const mark = (await serverLog()).length;
    await downloadAndLoad(b.page);
    const resumed = (await serverLog()).slice(mark).filter((l) => l.includes(MODEL_FILE));
    log('resume requests:', resumed);
    assert.ok(resumed.length === 1 && /range=bytes=[1-9]\d*-/.test(resumed[0]), 'resumed with a Range request');
    const badge = await b.page.getByTestId('backend-badge').innerText();
    log('badge:', badge);
    assert.match(badge, /CPU/);
    await settings(b.page, { temperature: 0, maxTokens: 32 });
    const r = await ask(b.page, QUESTION);
    log('CPU reply:', JSON.stringify(r.reply), r.stats);
    assert.ok(r.reply.trim().length > 0);
  } finally {
    await b.close();
  }
}

async function checksumFlow() {
  log('wrong sha256 → error banner, nothing usable');
  const b = await launch({ webgpu: false });
  try {
    await open(b.page);
    await b.page.locator('details.add-model summary').click();
    await b.page.getByTestId('add-url').fill(`models/${MODEL_FILE}?v=wrong-hash`);
    await b.page.getByTestId('add-sha256').fill('0'.repeat(64));
    await b.page.getByTestId('add-url-button').click();
    await b.page.getByTestId('download-button').click();
    await b.page.getByTestId('error-banner').first().waitFor({ timeout: LONG });
    const text = await b.page.getByTestId('error-banner').first().innerText();
    log('banner:', text);
    assert.match(text, /not the expected/);
    assert.ok(await b.page.getByTestId('prompt-input').isDisabled());
    const stored = await b.page.getByTestId('stored-models').innerText();
    assert.ok(!/verified/.test(stored), 'nothing stored as verified: ' + stored);
  } finally {
    await b.close();
  }
}

async function xssFlow() {
  log('a reply containing HTML renders as text');
  const b = await launch({ webgpu: false });
  try {
    const payload = '<img src=x onerror=alert(1)>';
    await open(b.page);
    // A stored conversation whose assistant reply carries the payload, rendered by the same
    // component as live replies.
    await b.page.evaluate((p) => localStorage.setItem('slm.conversations', JSON.stringify([{
      id: 'cx', title: 'xss', system: '', messages: [
        { role: 'user', content: 'say it' },
        { role: 'assistant', content: `Here: ${p} and <script>alert(2)</script> [x](javascript:alert(3))`, stats: null },
      ] }])), payload);
    await b.page.reload();
    await b.page.locator('details.saved summary').click();
    await b.page.getByText('xss').click();
    const msg = b.page.getByTestId('assistant-message').first();
    await msg.waitFor();
    assert.ok((await msg.innerText()).includes(payload), 'payload shown as text');
    assert.equal(await msg.locator('img, script').count(), 0, 'no element injected');
    assert.equal(await msg.locator('a[href^="javascript"]').count(), 0, 'no javascript: link');
    await b.page.waitForTimeout(300);
    assert.deepEqual(b.dialogs, [], 'no script ran');
  } finally {
    await b.close();
  }
}

const flows = { main: mainFlow, resume: resumeFlow, checksum: checksumFlow, xss: xssFlow };
let failed = 0;
for (const [name, f] of Object.entries(flows)) {
  if (only && only !== name) continue;
  try {
    await f();
    log(`PASS ${name}`);
  } catch (e) {
    failed++;
    log(`FAIL ${name}:`, e.stack || e);
  }
}
process.exit(failed ? 1 : 0);
