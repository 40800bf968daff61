// End-to-end tests of the slm web app in headless Chromium (Debian's package), driven by
// playwright-core. Run through `cargo xtask browser-tests`, which builds the app, starts a
// test-mode server (request log at /__log, `?cut=N` drops a download after N bytes) and sets
// SLM_URL. Each scenario uses a fresh browser profile.
import { chromium } from 'playwright-core';
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { execFileSync, spawn } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import assert from 'node:assert/strict';

const BASE = process.env.SLM_URL || 'http://127.0.0.1:8080/';
const CHROME = process.env.CHROMIUM || '/usr/lib/chromium/chromium';
const MODEL_FILE = 'SmolLM2-135M-Instruct.Q4_1.gguf';
const GEMMA3_FILE = 'gemma-3-270m-q4_k_m.gguf';
const MODEL_SHA = 'b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53';
const QUESTION = 'What color is the sky on a clear day?';
const LONG = 240_000;
const MODELS_DIR = process.env.SLM_MODELS_DIR || join(dirname(fileURLToPath(import.meta.url)), '..', 'models');
/// Flow names to run, comma-separated; by default every flow that does not need WebGPU.
const only = process.argv[2] || process.env.SLM_E2E_ONLY;

function log(...a) { console.log('[e2e]', ...a); }

async function serverLog() {
  const r = await fetch(new URL('__log', BASE));
  return (await r.text()).split('\n').filter(Boolean);
}

async function launch({ webgpu, thirdPartyStorage }) {
  const dir = mkdtempSync(join(tmpdir(), 'slm-e2e-'));
  const args = ['--no-sandbox', '--disable-background-networking', '--disable-component-update',
    '--disable-sync', '--no-first-run', '--headless=new'];
  if (webgpu) args.push('--enable-unsafe-webgpu');
  // This Chromium blocks third-party cookies by default and with them an embedded frame's
  // IndexedDB; the widget flows run as Chrome's default settings do (third-party storage
  // allowed, partitioned by the top-level site).
  if (thirdPartyStorage) args.push('--disable-features=TrackingProtection3pcd');
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
  return waitLoaded(page);
}

/// Wait until the prompt box is enabled (a model is loaded); an error banner fails the wait.
/// Returns the download progress values seen on the way.
async function waitLoaded(page) {
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
  if (!(await page.locator('details.settings').evaluate((d) => d.open))) await page.locator('details.settings summary').click();
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

/// What IndexedDB holds: the model records and the number of stored chunks (without creating
/// the database when the app has not yet).
async function idbState(page) {
  return page.evaluate(async () => {
    if (!(await indexedDB.databases()).some((d) => d.name === 'slm')) return { models: [], chunks: 0 };
    return new Promise((res, rej) => {
      const rq = indexedDB.open('slm');
      rq.onerror = () => rej(rq.error);
      rq.onsuccess = () => {
        const db = rq.result;
        const out = { models: [], chunks: 0 };
        if (!db.objectStoreNames.contains('models')) { db.close(); res(out); return; }
        const tx = db.transaction(['models', 'chunks'], 'readonly');
        const r1 = tx.objectStore('models').getAll();
        r1.onsuccess = () => { out.models = r1.result.map((t) => JSON.parse(t)); };
        const r2 = tx.objectStore('chunks').count();
        r2.onsuccess = () => { out.chunks = r2.result; };
        tx.oncomplete = () => { db.close(); res(out); };
        tx.onerror = () => rej(tx.error);
      };
    });
  });
}

/// The conversations saved in IndexedDB (store `chats`), newest first, once the app's queued
/// writes have landed.
async function savedChats(page) {
  await page.waitForFunction(() => !(globalThis.__slm_chat_writes > 0));
  return page.evaluate(async () => {
    if (!(await indexedDB.databases()).some((d) => d.name === 'slm')) return [];
    return new Promise((res, rej) => {
      const rq = indexedDB.open('slm');
      rq.onerror = () => rej(rq.error);
      rq.onsuccess = () => {
        const db = rq.result;
        if (!db.objectStoreNames.contains('chats')) { db.close(); res([]); return; }
        const r = db.transaction('chats', 'readonly').objectStore('chats').getAll();
        r.onsuccess = () => {
          db.close();
          res(r.result.map((t) => JSON.parse(t))
            .sort((a, b) => (b.updated - a.updated) || (a.id < b.id ? 1 : a.id > b.id ? -1 : 0)));
        };
        r.onerror = () => rej(r.error);
      };
    });
  });
}

/// Wait until `testid`'s first element's text matches `re`; returns the text.
async function waitText(page, testid, re, timeout = LONG) {
  const t0 = Date.now();
  let last = '';
  while (Date.now() - t0 < timeout) {
    const el = page.getByTestId(testid).first();
    if (await el.count()) {
      last = await el.innerText().catch(() => '');
      if (re.test(last)) return last;
    }
    await page.waitForTimeout(100);
  }
  throw new Error(`${testid} never matched ${re}; last text: ${JSON.stringify(last)}`);
}

async function mainFlow() {
  log('main flow: download → reload → load from IndexedDB → chat (WebGPU flag on, backend auto)');
  const b = await launch({ webgpu: true });
  const mark0 = (await serverLog()).length;
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
    const badge = await b.page.getByTestId('backend-badge').innerText();
    log('badge:', badge);
    // The adapter is named even where its description is empty (SwiftShader).
    if (backend === 'gpu') assert.match(badge, /^WebGPU · \S/, 'the badge names the adapter');
    // The app's server sends COOP/COEP: the chat below runs in the multi-threaded build.
    if (backend === 'cpu') {
      const t = await cpuThreads(b.page);
      log('CPU engine:', t);
      assert.equal(t.build, 'threads', 'a cross-origin isolated page runs the multi-threaded build');
    }

    // Reload: the model comes from IndexedDB, with no request for the model file.
    const mark = (await serverLog()).length;
    b.requests.length = 0;
    await b.page.reload();
    await b.page.getByTestId('model-select').waitFor();
    await b.page.getByTestId('backend-select').selectOption(backend);
    await b.page.waitForFunction(() => document.querySelector('[data-testid=download-button]')?.textContent.includes('Load'));
    await downloadAndLoad(b.page);
    // The highlighter is loaded when a code block is shown, never with the app.
    assert.deepEqual((await serverLog()).slice(mark0).filter((l) => l.includes('highlight')), [], 'no highlighter in the first load');
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
    // The stats name the backend that computed the reply: a GPU reply that silently fell back to
    // the CPU fails here.
    const banner = await b.page.getByTestId('error-banner').first().innerText().catch(() => '');
    assert.match(r.stats, backend === 'gpu' ? / · WebGPU$/ : / · CPU( ×\d+)?$/, `the reply ran on the chosen backend (banner: ${banner || 'none'})`);
    assert.ok(r.reply.trim().length > 0, 'non-empty reply');
    assert.ok(r.distinct >= 2, 'reply streamed in several steps');
    assert.match(r.reply.toLowerCase(), /blue/, 'the sky is blue');
    // The same text `slm generate` prints natively for this prompt (up to its first near-tie).
    const expect = process.env.SLM_E2E_EXPECT_PREFIX;
    if (expect) assert.ok(r.reply.trim().startsWith(expect), `reply starts with slm's ${JSON.stringify(expect)}`);
    assert.deepEqual(b.requests, [], 'no browser request while chatting');
    // The one exception: the browser's own update check of the service worker script (a GET of
    // the app's sw.js, carrying nothing), which it makes on its own schedule after a navigation.
    assert.deepEqual((await serverLog()).slice(mark2).filter((l) => !l.startsWith('GET /sw.js ')), [], 'no server request while chatting');
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

const XSS_PAYLOAD = '<img src=x onerror=alert(1)>';
// SmolLM2-135M at temperature 0 answers this with the payload itself, outside a code block
// (`slm generate`: "<img src=x onerror=alert(1)>\n\nThis will display the image …").
const XSS_PROMPT = `Repeat this HTML exactly: ${XSS_PAYLOAD}`;

async function xssFlow() {
  log('HTML in a reply renders as text: a reply the model really generates, and a saved one');
  const b = await launch({ webgpu: false });
  try {
    await open(b.page);
    await b.page.getByTestId('backend-select').selectOption('cpu');
    await downloadAndLoad(b.page);
    await settings(b.page, { temperature: 0, maxTokens: 40 });
    const r = await ask(b.page, XSS_PROMPT);
    log('generated reply:', JSON.stringify(r.reply));
    const msg = b.page.getByTestId('assistant-message').first();
    assert.match(r.reply, /<img[^>]*onerror=/, 'the model wrote an <img … onerror=…> tag');
    assert.ok(r.reply.includes(XSS_PAYLOAD), 'the generated tag is shown as text');
    assert.equal(await msg.locator('img, script').count(), 0, 'no element injected by the reply');
    assert.equal(await b.page.getByTestId('messages').locator('img, script, iframe').count(), 0, 'no element injected anywhere in the chat');
    const stored = (await savedChats(b.page))[0]?.messages?.at(-1)?.content || '';
    assert.ok(stored.includes(XSS_PAYLOAD), 'the reply is stored as the raw text the model wrote');

    // A stored conversation whose reply carries more payloads, rendered by the same component.
    await b.page.evaluate((p) => localStorage.setItem('slm.conversations', JSON.stringify([{
      id: 'cx', title: 'xss', system: '', messages: [
        { role: 'user', content: 'say it' },
        { role: 'assistant', content: `Here: ${p} and <script>alert(2)</script> [x](javascript:alert(3))`, stats: null },
      ] }])), XSS_PAYLOAD);
    await b.page.reload();
    await b.page.getByTestId('conv-open').filter({ hasText: 'xss' }).click();
    const saved = b.page.getByTestId('assistant-message').first();
    await saved.waitFor();
    assert.ok((await saved.innerText()).includes(XSS_PAYLOAD), 'payload shown as text');
    assert.equal(await saved.locator('img, script').count(), 0, 'no element injected');
    assert.equal(await saved.locator('a[href^="javascript"]').count(), 0, 'no javascript: link');
    await b.page.waitForTimeout(300);
    assert.deepEqual(b.dialogs, [], 'no script ran');
  } finally {
    await b.close();
  }
}

async function regenerateFlow() {
  log('regenerate replaces the last reply; at temperature 0 with the same text');
  const b = await launch({ webgpu: false });
  try {
    await open(b.page);
    await b.page.getByTestId('backend-select').selectOption('cpu');
    await downloadAndLoad(b.page);
    await settings(b.page, { temperature: 0, maxTokens: 32 });
    const first = await ask(b.page, QUESTION);
    assert.ok(first.reply.trim().length > 0);
    const before = (await savedChats(b.page))[0];
    assert.deepEqual(before.messages.map((m) => m.role), ['user', 'assistant']);

    await b.page.getByTestId('regenerate-button').click();
    await b.page.getByTestId('stop-button').waitFor({ timeout: 10_000 });
    let most = 0;
    while (await b.page.getByTestId('stop-button').isVisible().catch(() => false)) {
      most = Math.max(most, await b.page.getByTestId('assistant-message').count());
      await b.page.waitForTimeout(20);
    }
    await b.page.getByTestId('send-button').waitFor({ timeout: LONG });
    const replies = b.page.getByTestId('assistant-message');
    assert.equal(await replies.count(), 1, 'one assistant message for the turn after regenerating');
    assert.ok(most <= 1, 'the old reply is not shown next to the new one');
    assert.equal(await b.page.getByTestId('user-message').count(), 1, 'the question is not repeated');
    const again = await replies.first().innerText();
    log('first:', JSON.stringify(first.reply), '| regenerated:', JSON.stringify(again));
    assert.equal(again, first.reply, 'temperature 0: the regenerated reply equals the first');
    const after = (await savedChats(b.page))[0];
    assert.equal(after.id, before.id);
    assert.deepEqual(after.messages.map((m) => m.role), ['user', 'assistant'], 'stored: one reply for the turn');
    assert.equal(after.messages[1].content, before.messages[1].content, 'stored reply text unchanged');
    assert.notDeepEqual(after.messages[1].stats, before.messages[1].stats, 'stored reply is the new one (its own stats)');
  } finally {
    await b.close();
  }
}

async function stopFlow() {
  log('stop on a page that is not cross-origin isolated: the reply ends at once, the chat goes on');
  const b = await launch({ webgpu: false });
  try {
    const resp = await b.page.goto(new URL('?isolation=off', BASE).href);
    assert.equal(resp.headers()['cross-origin-opener-policy'], undefined, 'test hook: no COOP');
    await b.page.getByTestId('model-select').waitFor();
    assert.equal(await b.page.evaluate(() => crossOriginIsolated), false, 'page is not cross-origin isolated');
    await b.page.getByTestId('backend-select').selectOption('cpu');
    await downloadAndLoad(b.page);
    await settings(b.page, { temperature: 0, maxTokens: 400 });
    await b.page.getByTestId('prompt-input').fill('Write a long story about a lighthouse keeper and a storm.');
    await b.page.getByTestId('send-button').click();
    await b.page.getByTestId('stop-button').waitFor({ timeout: 10_000 });
    const reply = b.page.getByTestId('assistant-message').first();
    const t0 = Date.now();
    while ((await reply.innerText().catch(() => '')).length < 40) {
      assert.ok(Date.now() - t0 < 60_000, 'the reply streams');
      await b.page.waitForTimeout(20);
    }
    const tStop = Date.now();
    await b.page.getByTestId('stop-button').click();
    await b.page.getByTestId('send-button').waitFor({ timeout: 5_000 });
    const stopMs = Date.now() - tStop;
    const stopped = await reply.innerText();
    const stats = await b.page.getByTestId('reply-stats').last().innerText();
    log(`stopped after ${stopMs} ms: ${JSON.stringify(stopped)} | ${stats}`);
    assert.match(stats, /\(cancelled\)/, 'the reply says it was stopped');
    const n = Number(/(\d+) tokens/.exec(stats)[1]);
    assert.ok(n < 200, `stopped long before max_tokens (${n} tokens)`);
    await b.page.waitForTimeout(1000);
    assert.equal(await reply.innerText(), stopped, 'nothing more streams after Stop');
    assert.equal((await savedChats(b.page))[0].messages[1].content.length > 0, true, 'the partial reply is kept');

    // The worker is ready for the next turn, which reuses the KV cache of the stopped one.
    await settings(b.page, { temperature: 0, maxTokens: 16 });
    const next = await ask(b.page, QUESTION);
    log('next reply:', JSON.stringify(next.reply), next.stats);
    assert.ok(next.reply.trim().length > 0, 'a reply after the stopped one');
    assert.match(next.stats, /\((max_tokens|eog)\)/);
  } finally {
    await b.close();
  }
}

async function conversationFlow() {
  log('system prompt, context meter, context full, regenerate after it, reload keeps the chat, new chat, delete');
  const PIRATE = 'You are a pirate. Answer in one short sentence.';
  const b = await launch({ webgpu: false });
  try {
    await open(b.page);
    await b.page.getByTestId('backend-select').selectOption('cpu');
    await downloadAndLoad(b.page);
    await settings(b.page, { temperature: 0, maxTokens: 16 });
    await b.page.getByTestId('system-prompt').fill(PIRATE);
    const used = async () => {
      const m = /context (\d+) \/ (\d+) tokens/.exec(await b.page.getByTestId('context-meter').innerText());
      assert.ok(m, 'context meter shown');
      return [Number(m[1]), Number(m[2])];
    };
    const r1 = await ask(b.page, QUESTION);
    const [u1, nCtx] = await used();
    const r2 = await ask(b.page, 'And at night?');
    const [u2] = await used();
    log(`replies: ${JSON.stringify(r1.reply)} | ${JSON.stringify(r2.reply)}; context ${u1} → ${u2} of ${nCtx}`);
    assert.ok(u1 > 20 && u2 > u1 && u2 < nCtx, 'the meter counts the conversation');

    // A reply that cannot fit: a plain message, the conversation and the model stay usable.
    await settings(b.page, { temperature: 0, maxTokens: nCtx });
    await b.page.getByTestId('prompt-input').fill('Thanks!');
    await b.page.getByTestId('send-button').click();
    const full = await waitText(b.page, 'error-banner', /no longer fits in the model's context window/, 30_000);
    log('banner:', full);
    await b.page.getByTestId('send-button').waitFor();
    assert.equal(await b.page.getByTestId('assistant-message').count(), 2, 'no garbage reply');
    assert.equal(await b.page.getByTestId('user-message').count(), 3, 'the question is kept');
    await settings(b.page, { temperature: 0, maxTokens: 16 });
    await b.page.getByTestId('regenerate-button').click();
    await b.page.getByTestId('send-button').waitFor({ timeout: LONG });
    await b.page.waitForFunction(() => document.querySelectorAll('[data-testid=assistant-message]').length === 3);
    // Context size: bounded by the model, clamped, a change reloads the model with it, and it is
    // kept with the conversation (the reload below brings it back).
    const ctxIn = b.page.getByTestId('context-size');
    assert.equal(await ctxIn.inputValue(), String(nCtx));
    assert.equal(await ctxIn.getAttribute('max'), '8192', "SmolLM2-135M's trained context (its KV cache fits the budget)");
    await ctxIn.fill('100');
    await ctxIn.dispatchEvent('change');
    assert.equal(await ctxIn.inputValue(), '256', 'clamped to the smallest size');
    await ctxIn.fill('512');
    await ctxIn.dispatchEvent('change');
    await waitText(b.page, 'context-size-hint', /now running with 512 tokens/, 60_000);
    await waitLoaded(b.page);
    await ask(b.page, 'Ahoy?');
    assert.equal((await used())[1], 512, 'the model runs with the new context size');
    const saved = await savedChats(b.page);
    assert.equal(saved.length, 1);
    assert.equal(saved[0].settings.n_ctx, 512, 'context size stored with the conversation');
    assert.equal(saved[0].system, PIRATE, 'the edited system prompt is stored');
    assert.deepEqual(saved[0].messages.map((m) => m.role), ['user', 'assistant', 'user', 'assistant', 'user', 'assistant', 'user', 'assistant']);

    // Reload: the conversation is back, the model loads from storage, the chat goes on.
    const texts = await b.page.getByTestId('assistant-message').allInnerTexts();
    await b.page.reload();
    await b.page.getByTestId('model-select').waitFor();
    await b.page.getByTestId('backend-select').selectOption('cpu');
    await b.page.waitForFunction(() => document.querySelector('[data-testid=download-button]')?.textContent.includes('Load'));
    assert.deepEqual(await b.page.getByTestId('assistant-message').allInnerTexts(), texts, 'replies shown after reload');
    assert.equal(await b.page.getByTestId('system-prompt').inputValue(), PIRATE);
    await downloadAndLoad(b.page);
    await settings(b.page, { temperature: 0, maxTokens: 16 });
    const r4 = await ask(b.page, 'Where is your ship?');
    assert.ok(r4.reply.trim().length > 0);
    assert.equal((await used())[1], 512, "loaded with the conversation's context size");
    assert.equal((await savedChats(b.page))[0].messages.length, 10);

    // New chat empties the view and keeps the saved one; Delete removes it.
    await b.page.getByTestId('new-chat').click();
    assert.equal(await b.page.getByTestId('assistant-message').count(), 0);
    await b.page.getByTestId('conv-delete').first().click();
    assert.deepEqual(await savedChats(b.page), [], 'deleted from storage');
    await b.page.reload();
    await b.page.getByTestId('model-select').waitFor();
    assert.equal(await b.page.getByTestId('user-message').count(), 0, 'nothing comes back after delete');
  } finally {
    await b.close();
  }
}

async function hubFlow() {
  log('a Hub URL added without a sha256 is verified with the sha256 the Hub lists (test server stands in for the Hub)');
  const b = await launch({ webgpu: false });
  try {
    await open(b.page);
    const add = async (url) => {
      if (!(await b.page.locator('details.add-model').evaluate((d) => d.open))) await b.page.locator('details.add-model summary').click();
      await b.page.getByTestId('add-url').fill(url);
      await b.page.getByTestId('add-sha256').fill('');
      await b.page.getByTestId('add-url-button').click();
    };
    // The Hub lists a different sha256: the download is rejected and nothing is kept.
    await add(new URL(`TestOrg/Bad-GGUF/resolve/main/${MODEL_FILE}`, BASE).href);
    await b.page.getByTestId('download-button').click();
    const banner = await waitText(b.page, 'error-banner', /not the expected/);
    log('bad listing:', banner);
    assert.ok(await b.page.getByTestId('prompt-input').isDisabled());

    const mark = (await serverLog()).length;
    await add(new URL(`TestOrg/SmolLM2-GGUF/resolve/main/${MODEL_FILE}`, BASE).href);
    await downloadAndLoad(b.page);
    const reqs = (await serverLog()).slice(mark);
    log('requests:', reqs);
    assert.ok(reqs.some((l) => l.startsWith('GET /api/models/TestOrg/SmolLM2-GGUF/tree/main ')), 'asked the Hub listing');
    const stored = await b.page.getByTestId('stored-models').innerText();
    log('stored:', stored);
    assert.match(stored, /verified by sha256/);
    assert.ok(!/verified by size/.test(stored), 'not by size only');
  } finally {
    await b.close();
  }
}

async function cancelFlow() {
  log('cancel a download, resume it with Range, then delete the stored model');
  const b = await launch({ webgpu: false });
  try {
    await open(b.page);
    await b.page.locator('details.add-model summary').click();
    await b.page.getByTestId('add-url').fill(`models/${MODEL_FILE}?slow=20000000`);
    await b.page.getByTestId('add-sha256').fill(MODEL_SHA);
    await b.page.getByTestId('add-url-button').click();
    await b.page.getByTestId('download-button').click();
    const bar = b.page.getByTestId('download-progress');
    await b.page.waitForFunction(() => Number(document.querySelector('[data-testid=download-progress]')?.value) >= 25, null, { timeout: 60_000 });
    const text = await b.page.locator('.progress-text').first().innerText();
    log('progress:', text);
    assert.match(text, /MB of 98\.4 MB \(\d+%\) · .+\/s · .+ left/, 'bytes, %, speed and time left');
    await b.page.getByTestId('cancel-button').click();
    const banner = await waitText(b.page, 'error-banner', /Download cancelled/, 10_000);
    log('cancel:', banner, '| at', await bar.getAttribute('value'), '%');
    assert.ok(await b.page.getByTestId('prompt-input').isDisabled(), 'not usable after cancel');
    await b.page.getByTestId('stored-models').getByText('partial').waitFor();
    const part = await idbState(b.page);
    assert.ok(part.chunks >= 1 && part.models.every((m) => !m.complete), 'a partial, unusable part is kept');

    const mark = (await serverLog()).length;
    await downloadAndLoad(b.page);
    const resumed = (await serverLog()).slice(mark).filter((l) => l.includes(MODEL_FILE));
    log('resume:', resumed);
    assert.ok(resumed.length === 1 && /range=bytes=[1-9]\d*-/.test(resumed[0]), 'resumed with Range');
    await b.page.getByTestId('stored-models').getByText('verified by sha256').waitFor();
    const env = await b.page.locator('.env').innerText();
    log('this device:', env.replace(/\n/g, ' | '));
    assert.match(env, /Storage: .+ used of about .+ available/);
    assert.match(env, /Persistent storage: (granted|not granted)/, 'says whether persistent storage was granted');

    // Delete: nothing left in IndexedDB, the model must be downloaded again.
    await b.page.getByTestId('stored-models').getByRole('button', { name: 'Delete' }).click();
    await b.page.waitForFunction(() => document.querySelector('[data-testid=download-button]')?.textContent.includes('Download'));
    const after = await idbState(b.page);
    log('after delete:', JSON.stringify({ models: after.models.length, chunks: after.chunks }));
    assert.deepEqual([after.models.length, after.chunks], [0, 0], 'model records and chunks deleted');
  } finally {
    await b.close();
  }
}

async function importFlow() {
  log('a local .gguf file: stored in IndexedDB, listed, loaded and chatting, never fetched');
  const b = await launch({ webgpu: false });
  try {
    await open(b.page);
    await b.page.getByTestId('backend-select').selectOption('cpu');
    const mark = (await serverLog()).length;
    const file = join(MODELS_DIR, MODEL_FILE);
    const size = statSync(file).size;
    await b.page.locator('details.add-model summary').click();
    const t0 = Date.now();
    await b.page.getByTestId('import-file').setInputFiles(file);
    await waitLoaded(b.page);
    log(`imported and loaded in ${((Date.now() - t0) / 1e3).toFixed(1)} s`);
    const item = b.page.getByTestId('stored-models').locator('li', { hasText: MODEL_FILE });
    await item.waitFor();
    assert.match(await item.innerText(), /imported from a local file/);
    const st = await idbState(b.page);
    const rec = st.models.find((m) => m.id.startsWith('file:'));
    assert.ok(rec, 'a stored record for the file: ' + JSON.stringify(st.models));
    assert.equal(rec.complete, true);
    assert.equal(rec.size, size);
    assert.equal(rec.sha256, MODEL_SHA, 'the stored bytes are the file (sha256)');
    assert.equal(st.chunks, rec.n_chunks);
    await settings(b.page, { temperature: 0, maxTokens: 24 });
    const r = await ask(b.page, QUESTION);
    log('reply:', JSON.stringify(r.reply));
    assert.match(r.reply.toLowerCase(), /blue/);
    // The benchmark hook (`cargo xtask bench --browser`) on the loaded model: figures, a bounded
    // request refused, and the chat still answers the same afterwards.
    const bench = await b.page.evaluate(() => window.__slm_test.bench(16, 8, 1));
    log('bench hook (pp16/tg8):', JSON.stringify(bench));
    assert.ok(bench.backend === 'cpu' && bench.threads >= 1 && bench.prefill_tok_s > 0 && bench.decode_tok_s > 0);
    const refused = await b.page.evaluate(() => window.__slm_test.bench(1e9, 8, 1).then(() => 'ran', (e) => String(e)));
    assert.match(refused, /bench/, 'an out-of-context benchmark is refused');
    await b.page.getByTestId('regenerate-button').click();
    await b.page.getByTestId('stop-button').waitFor({ timeout: 10_000 });
    await b.page.getByTestId('send-button').waitFor({ timeout: LONG });
    assert.equal(await b.page.getByTestId('assistant-message').last().innerText(), r.reply, 'the same reply after the benchmark');

    // Next visit: the file is in the list and loads from storage.
    await b.page.reload();
    await b.page.getByTestId('model-select').waitFor();
    await b.page.getByTestId('backend-select').selectOption('cpu');
    await b.page.getByTestId('stored-models').locator('li', { hasText: MODEL_FILE }).getByTestId('stored-load').click();
    await waitLoaded(b.page);
    assert.match(await b.page.getByTestId('backend-badge').innerText(), /CPU/);
    assert.equal(await b.page.getByTestId('model-select').inputValue(), rec.id, 'the picker shows the imported model');
    const modelReqs = (await serverLog()).slice(mark).filter((l) => l.includes(MODEL_FILE));
    assert.deepEqual(modelReqs, [], 'the server never saw a request for the model file');
    assert.deepEqual(b.requests.filter((u) => u.includes('.gguf')), [], 'the browser never requested a .gguf');
  } finally {
    await b.close();
  }
}

/// Wait until the error banner's text matches `re` (at most `ms`); returns its text and the time.
async function waitBanner(page, re, ms) {
  const t0 = Date.now();
  const text = await waitText(page, 'error-banner', re, ms);
  return { text, secs: (Date.now() - t0) / 1e3 };
}

async function hostileFlow() {
  log('hostile model files (engine/tests/tools/hostile_models.py): a plain error in the banner within 10 s each, the app stays usable');
  const dir = mkdtempSync(join(tmpdir(), 'slm-hostile-'));
  const script = join(dirname(fileURLToPath(import.meta.url)), '..', 'engine', 'tests', 'tools', 'hostile_models.py');
  execFileSync('python3', [script, join(MODELS_DIR, MODEL_FILE), dir, '--only',
    'template_header_only,array_bomb_u8_64mib,template_fallback'], { stdio: 'inherit' });
  const cases = Object.fromEntries(JSON.parse(readFileSync(join(dir, 'cases.json'), 'utf8')).map((c) => [c.name, c.file]));
  const b = await launch({ webgpu: false });
  try {
    await open(b.page);
    await b.page.getByTestId('backend-select').selectOption('cpu');
    await b.page.locator('details.add-model summary').click();
    const importFile = async (file) => b.page.getByTestId('import-file').setInputFiles(file);

    // 1. A chat template that loops for ever: refused at load, with the built-in format offered.
    let t0 = Date.now();
    await importFile(cases.template_header_only);
    let r = await waitBanner(b.page, /chat template cannot be used/, 10_000);
    const secs1 = (Date.now() - t0) / 1e3;
    log(`hostile template refused in ${secs1.toFixed(1)} s:`, r.text);
    assert.ok(secs1 < 10, 'template refused within 10 s');
    assert.match(r.text, /fuel limit/);
    assert.ok(await b.page.getByTestId('template-fallback').isVisible(), 'the built-in format is offered');
    assert.ok(await b.page.getByTestId('prompt-input').isDisabled(), 'no model loaded');
    await b.page.locator('.error-banner .dismiss').click();

    // 2. 64 MiB of metadata arrays: parsed without materialising them, refused by name.
    t0 = Date.now();
    await importFile(cases.array_bomb_u8_64mib);
    r = await waitBanner(b.page, /could not be loaded/, 10_000);
    const secs2 = (Date.now() - t0) / 1e3;
    log(`metadata bomb refused in ${secs2.toFixed(1)} s:`, r.text);
    assert.ok(secs2 < 10, 'metadata bomb refused within 10 s');
    assert.match(r.text, /unsupported model architecture `bomb`/);
    await b.page.locator('.error-banner .dismiss').click();

    // 3. The full model with the hostile template: refused, then loaded with the built-in
    //    format only when the user asks, and it chats.
    await importFile(cases.template_fallback);
    r = await waitBanner(b.page, /chat template cannot be used/, LONG);
    await b.page.getByTestId('template-fallback').click();
    await b.page.waitForFunction(() => !document.querySelector('[data-testid=prompt-input]').disabled, null, { timeout: LONG });
    const note = await b.page.getByTestId('error-banner').first().innerText();
    log('fallback:', note);
    assert.match(note, /built-in chat format instead/, 'the fallback is said, not silent');
    await settings(b.page, { temperature: 0, maxTokens: 16 });
    let reply = await ask(b.page, QUESTION);
    log('reply with the built-in format:', JSON.stringify(reply.reply));
    assert.ok(reply.reply.trim().length > 0);
    // (Sending a message clears the banner.)
    if (await b.page.getByTestId('error-banner').count()) await b.page.locator('.error-banner .dismiss').click();

    // 4. The normal model loads and chats in the same page (the model loaded in 3 stays usable
    //    while the file is stored, so wait for the new one by its id).
    const before = await b.page.getByTestId('model-ready').getAttribute('data-model-id');
    await importFile(join(MODELS_DIR, MODEL_FILE));
    await b.page.waitForFunction((old) => {
      const el = document.querySelector('[data-testid=model-ready]');
      return el && el.dataset.modelId !== old && !document.querySelector('[data-testid=prompt-input]').disabled;
    }, before, { timeout: LONG });
    reply = await ask(b.page, QUESTION);
    log('reply from the normal model:', JSON.stringify(reply.reply));
    assert.match(reply.reply.toLowerCase(), /blue/);

    // 5. Loading a model while a reply streams: the reply ends (cancelled, its text kept), the
    //    model loads, and the next question is answered (requests are queued by id, none lost).
    await settings(b.page, { temperature: 0, maxTokens: 400 });
    const n = await b.page.getByTestId('assistant-message').count();
    await b.page.getByTestId('prompt-input').fill('Tell me a long story about a lighthouse keeper.');
    await b.page.getByTestId('send-button').click();
    await b.page.waitForFunction((k) => {
      const m = document.querySelectorAll('[data-testid=assistant-message]');
      return m.length > k && m[k].innerText.length > 20;
    }, n, { timeout: LONG });
    t0 = Date.now();
    await b.page.getByTestId('stored-models').locator('li', { hasText: MODEL_FILE }).getByTestId('stored-load').click();
    await b.page.getByTestId('send-button').waitFor({ timeout: 30_000 });
    await waitLoaded(b.page);
    const cut = await b.page.getByTestId('assistant-message').nth(n).innerText();
    const cutStats = await b.page.getByTestId('reply-stats').last().innerText();
    log(`load during a reply: the reply ended and the model reloaded in ${((Date.now() - t0) / 1e3).toFixed(1)} s; reply kept:`, JSON.stringify(cut.slice(0, 60)), cutStats);
    assert.match(cutStats, /cancelled/, 'the interrupted reply says it was cut');
    await settings(b.page, { temperature: 0, maxTokens: 16 });
    reply = await ask(b.page, QUESTION);
    log('next reply:', JSON.stringify(reply.reply));
    assert.ok(reply.reply.trim().length > 0);
  } finally {
    await b.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

async function gemma3Flow() {
  // SLM_E2E_BACKEND=gpu: a WebGPU page, where auto takes the GPU (SwiftShader: a few tokens);
  // otherwise a page without WebGPU, where auto takes the CPU and says why.
  const gpu = process.env.SLM_E2E_BACKEND === 'gpu';
  log(`Gemma 3 (imported file), backend auto, ${gpu ? 'WebGPU page: runs on the GPU' : 'no WebGPU: runs on the CPU'}; the reply matches slm generate`);
  const b = await launch({ webgpu: gpu });
  try {
    await open(b.page);
    await b.page.locator('details.add-model summary').click();
    const t0 = Date.now();
    await b.page.getByTestId('import-file').setInputFiles(join(MODELS_DIR, GEMMA3_FILE));
    await waitLoaded(b.page);
    const ready = await b.page.getByTestId('model-ready').innerText();
    log(`imported and loaded in ${((Date.now() - t0) / 1e3).toFixed(1)} s:`, ready);
    if (gpu) {
      assert.match(ready, /^Ready: gemma3 on GPU/, 'gemma3 runs on the GPU');
      assert.match(await b.page.getByTestId('backend-badge').innerText(), /WebGPU/);
    } else {
      assert.match(ready, /^Ready: gemma3 on CPU/, 'gemma3 runs on the CPU');
      assert.match(ready, /GPU not used: .*no WebGPU/, 'the reason says why the GPU was not used');
      assert.match(await b.page.getByTestId('backend-badge').innerText(), /CPU/);
    }
    await settings(b.page, { temperature: 0, maxTokens: gpu ? 5 : 24 });
    const r = await ask(b.page, QUESTION);
    log('reply:', JSON.stringify(r.reply), r.stats);
    assert.match(r.stats, gpu ? / · WebGPU$/ : / · CPU( ×\d+)?$/, 'the reply ran on the backend that loaded');
    assert.ok(r.reply.trim().length > 0, 'non-empty reply');
    // The 270M file is the base model: it continues the prompt text (Markdown paragraphs, so
    // whitespace is compared loosely). On the GPU only a few tokens are generated: they must be
    // the start of slm generate's text.
    const flat = (t) => t.replace(/\s+/g, ' ').trim();
    const expect = process.env.SLM_E2E_EXPECT_PREFIX_GEMMA3;
    if (gpu) {
      assert.ok(expect, 'SLM_E2E_EXPECT_PREFIX_GEMMA3 is set');
      assert.ok(flat(expect).startsWith(flat(r.reply)), `reply ${JSON.stringify(r.reply)} is the start of slm's ${JSON.stringify(expect)}`);
    } else if (expect) {
      assert.ok(flat(r.reply).startsWith(flat(expect)), `reply starts with slm's ${JSON.stringify(expect)}`);
    }
  } finally {
    await b.close();
  }
}

async function quotaFlow() {
  log('storage quota too small: plain "storage is full", nothing usable, nothing left behind');
  const b = await launch({ webgpu: false });
  try {
    await open(b.page);
    const cdp = await b.page.context().newCDPSession(b.page);
    const origin = new URL(BASE).origin;
    const QUOTA = 20_000_000;
    await cdp.send('Storage.overrideQuotaForOrigin', { origin, quotaSize: QUOTA });
    // Let the storage panel settle with the small quota in place.
    await b.page.reload();
    await b.page.getByTestId('model-select').waitFor();

    const check = async (what) => {
      const text = await waitText(b.page, 'error-banner', /storage is full/i);
      log(`${what}:`, text);
      assert.ok(await b.page.getByTestId('prompt-input').isDisabled(), 'no model loaded');
      const st = await idbState(b.page);
      assert.deepEqual(st.models.filter((m) => m.complete), [], 'nothing marked usable');
      assert.equal(st.chunks, 0, 'no partial chunks left behind');
      await b.page.getByTestId('stored-models').getByText('None yet.').waitFor();
      return text;
    };

    // 1. Chromium's storage.estimate() does not show the override (it reports usage + about
    //    10 GiB whatever the quota), so the download starts and the writes hit the quota.
    let mark = (await serverLog()).length;
    await b.page.getByTestId('download-button').click();
    const text = await check('write');
    assert.match(text, /refused to store more/);
    assert.ok((await serverLog()).slice(mark).some((l) => l.includes(MODEL_FILE)), 'the download had started');

    // 2. A browser whose estimate shows the small quota: refused before any request.
    await b.page.addInitScript((q) => {
      Object.defineProperty(StorageManager.prototype, 'estimate', { value: async () => ({ usage: 0, quota: q }) });
    }, QUOTA);
    await b.page.reload();
    await b.page.getByTestId('model-select').waitFor();
    mark = (await serverLog()).length;
    await b.page.getByTestId('download-button').click();
    assert.match(await check('estimate'), /needs 98\.4 MB, about 20\.0 MB is free/);
    assert.deepEqual((await serverLog()).slice(mark).filter((l) => l.includes(MODEL_FILE)), [], 'no download started');

    // 3. Next visit: nothing to load.
    await b.page.reload();
    await b.page.getByTestId('stored-models').getByText('None yet.').waitFor();
    assert.equal((await b.page.getByTestId('download-button').innerText()).trim(), 'Download');
    assert.ok(await b.page.getByTestId('prompt-input').isDisabled());
  } finally {
    await b.close();
  }
}

async function gpuLostFlow() {
  log('WebGPU device lost: the model moves to the CPU and the conversation stays (SwiftShader)');
  const b = await launch({ webgpu: true });
  const page = b.page;
  try {
    await open(page);
    await page.getByTestId('backend-select').selectOption('gpu');
    let t = Date.now();
    await downloadAndLoad(page);
    const badge = await page.getByTestId('backend-badge').innerText();
    log(`loaded on the GPU in ${((Date.now() - t) / 1e3).toFixed(1)} s; badge:`, JSON.stringify(badge));
    assert.match(badge, /^WebGPU · \S/, 'the badge names the adapter');
    await settings(page, { temperature: 0, maxTokens: 3 });
    t = Date.now();
    const r1 = await ask(page, 'Hi');
    log(`GPU reply in ${((Date.now() - t) / 1e3).toFixed(1)} s:`, JSON.stringify(r1.reply), r1.stats);
    assert.ok(r1.reply.trim().length > 0);
    assert.match(r1.stats, / · WebGPU$/, 'the first reply ran on the GPU (before the loss)');

    // 1. Lost while a reply is being computed: the reply is computed again on the CPU.
    await page.getByTestId('prompt-input').fill('Thanks!');
    await page.getByTestId('send-button').click();
    await page.getByTestId('stop-button').waitFor({ timeout: 10_000 });
    await page.evaluate(() => window.__slm_test.loseGpu());
    t = Date.now();
    await waitText(page, 'backend-badge', /CPU/);
    await page.getByTestId('send-button').waitFor({ timeout: LONG });
    log(`mid-reply loss recovered in ${((Date.now() - t) / 1e3).toFixed(1)} s:`, await page.getByTestId('error-banner').first().innerText());
    assert.match(await page.getByTestId('error-banner').first().innerText(), /GPU stopped working \(the GPU device was destroyed\).*now runs on the CPU/s);
    assert.equal(await page.getByTestId('backend-select').inputValue(), 'cpu');
    assert.equal(await page.getByTestId('user-message').count(), 2);
    assert.equal(await page.getByTestId('assistant-message').count(), 2, 'the interrupted turn got one reply');
    assert.equal(await page.getByTestId('assistant-message').first().innerText(), r1.reply, 'the earlier reply is kept');

    // 2. Lost while idle: noticed at once, badge and banner change before the next message.
    await page.locator('.error-banner .dismiss').click();
    await page.getByTestId('backend-select').selectOption('gpu');
    await waitText(page, 'backend-badge', /WebGPU/);
    await page.waitForFunction(() => !document.querySelector('[data-testid=prompt-input]').disabled);
    assert.equal(await page.getByTestId('error-banner').count(), 0, 'no banner before the loss');
    await page.evaluate(() => window.__slm_test.loseGpu());
    const banner = await waitText(page, 'error-banner', /GPU stopped working \(the GPU device was destroyed\).*now runs on the CPU/s, 60_000);
    log('idle loss:', banner);
    await waitText(page, 'backend-badge', /CPU/, 60_000);
    assert.equal(await page.getByTestId('user-message').count(), 2, 'earlier questions still shown');
    assert.equal(await page.getByTestId('assistant-message').count(), 2, 'earlier replies still shown');
    await settings(page, { temperature: 0, maxTokens: 16 });
    const r3 = await ask(page, QUESTION);
    log('CPU reply after the loss:', JSON.stringify(r3.reply), r3.stats);
    assert.match(r3.reply.toLowerCase(), /sky/);
    // SwiftShader decodes at ~0.5 tok/s, the wasm CPU engine at ~30: this reply came from the CPU.
    assert.ok(Number(/decode ([\d.]+) tok\/s/.exec(r3.stats)?.[1]) > 3, 'decoded at CPU speed: ' + r3.stats);
    assert.match(await page.getByTestId('backend-badge').innerText(), /CPU/);
    const saved = (await savedChats(page))[0];
    assert.deepEqual(saved.messages.map((m) => m.role), ['user', 'assistant', 'user', 'assistant', 'user', 'assistant'], 'stored conversation kept every turn');
  } finally {
    await b.close();
  }
}

/// axe-core's serious and critical accessibility violations on the page as it stands.
async function axeViolations(page) {
  const src = readFileSync(join(dirname(fileURLToPath(import.meta.url)), 'node_modules/axe-core/axe.min.js'), 'utf8');
  // Evaluated through the driver: the page's CSP allows no inline script.
  await page.evaluate(src);
  return page.evaluate(async () => (await window.axe.run(document)).violations
    .filter((v) => v.impact === 'serious' || v.impact === 'critical')
    .map((v) => `${v.id} (${v.impact}): ${v.nodes.slice(0, 3).map((n) => n.target.join(' ')).join(', ')}`));
}

/// The chat app around the engine: theme from prefers-color-scheme and the toggle, a <think>
/// section collapsed, copy of a message and of a code block (clipboard checked), edit-and-resend, Esc stops, the conversation
/// list (newest first, search, switch, rename, delete + undo, export → import), Markdown export, a
/// 390×844 phone viewport, and no serious or critical axe-core violation (phone, desktop, both themes).
async function uiFlow() {
  log('ui: theme, think, copy, edit-and-resend, Esc, conversations, phone viewport');
  const b = await launch({ webgpu: false });
  const { page } = b;
  try {
    await b.ctx.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: new URL(BASE).origin });
    await page.emulateMedia({ colorScheme: 'dark' });
    await open(page);
    const bg = () => page.evaluate(() => getComputedStyle(document.body).backgroundColor);
    const lum = (c) => { const [r, g, bb] = c.match(/\d+/g).map(Number); return (r + g + bb) / 3; };
    assert.ok(lum(await bg()) < 60, `dark theme from prefers-color-scheme: ${await bg()}`);
    await page.getByTestId('theme-toggle').click();
    assert.ok(lum(await bg()) > 200, 'the toggle switches to light');
    await page.reload();
    await page.getByTestId('model-select').waitFor();
    assert.ok(lum(await bg()) > 200, 'the choice survives a reload');
    await page.getByTestId('theme-toggle').click();
    assert.ok(lum(await bg()) < 60, 'and back to dark');

    // A reasoning model's <think> section is shown collapsed.
    await page.evaluate(() => localStorage.setItem('slm.conversations', JSON.stringify([{
      id: 'think', title: 'thinking', system: '', updated: 1, messages: [
        { role: 'user', content: 'why?' },
        { role: 'assistant', content: '<think>Let me reason <b>hard</b>.</think>\n\nBecause **reasons**.\n\n```rust\nfn main() {}\n```\n', stats: null },
      ] }])));
    await page.reload();
    await page.getByTestId('model-select').waitFor();
    const think = page.locator('[data-testid=assistant-message] details.think');
    await think.waitFor({ state: 'attached' });
    // Conversations an earlier version kept in localStorage moved to IndexedDB, once.
    assert.equal(await page.evaluate(() => localStorage.getItem('slm.conversations')), null, 'localStorage key removed after the move');
    assert.deepEqual((await savedChats(page)).map((c) => c.id), ['think'], 'moved into IndexedDB');
    assert.equal(await think.evaluate((d) => d.open), false, 'think section collapsed');
    assert.equal(await think.locator('summary').innerText(), 'Reasoning');
    assert.equal(await page.locator('[data-testid=assistant-message] b').count(), 0, 'no markup injected');
    assert.equal(await page.locator('[data-testid=assistant-message] strong').innerText(), 'reasons');
    // The code block is syntax-highlighted (highlight.js, imported now that a block is shown).
    const code = page.locator('[data-testid=assistant-message] pre code.hljs');
    await code.waitFor({ state: 'attached' });
    assert.equal(await code.locator('.hljs-keyword').first().innerText(), 'fn', 'rust keyword highlighted');
    assert.notEqual(await code.locator('.hljs-keyword').first().evaluate((e) => getComputedStyle(e).color),
      await code.evaluate((e) => getComputedStyle(e).color), 'keywords have their own colour');
    assert.ok(b.requests.some((u) => u.endsWith('/vendor/highlight.min.js')), 'highlighter fetched from the app');
    // A code block's Copy button copies the code.
    await page.getByTestId('code-copy').click();
    await page.waitForFunction(() => navigator.clipboard.readText().then((c) => c === 'fn main() {}\n'));
    assert.deepEqual(await axeViolations(page), [], 'axe: a saved conversation, no model');
    await page.getByTestId('conv-delete').first().click();
    await page.getByTestId('undo-toast').waitFor();

    await page.getByTestId('backend-select').selectOption('cpu');
    await downloadAndLoad(page);
    await settings(page, { temperature: 0, maxTokens: 8 });
    await page.getByTestId('settings-close').click();

    // Copy: the clipboard holds the reply's raw text.
    const r1 = await ask(page, QUESTION);
    const reply1 = page.locator('.msg.assistant').first();
    await reply1.hover();
    await reply1.getByTestId('copy-button').click();
    const stored1 = (await savedChats(page))[0].messages[1].content;
    await page.waitForFunction((t) => navigator.clipboard.readText().then((c) => c === t), stored1);
    assert.match(r1.stats, /^TTFT \d+ ms · prefill [\d.]+ tok\/s · decode [\d.]+ tok\/s · \d+ tokens \(max_tokens\) · CPU( ×\d+)?$/, 'per-reply stats: TTFT, speeds, tokens, backend');
    assert.match(await page.getByTestId('status-speed').innerText(), /tok\/s/);

    // Edit-and-resend: the later turns are dropped, the edited question is answered.
    await ask(page, 'And at night?');
    assert.equal(await page.getByTestId('user-message').count(), 2);
    const q1 = page.locator('.msg.user').first();
    await q1.hover();
    await q1.getByTestId('edit-button').click();
    await page.getByTestId('edit-input').fill('What color is grass?');
    await page.getByTestId('edit-send').click();
    await page.getByTestId('stop-button').waitFor({ timeout: 10_000 });
    await page.getByTestId('send-button').waitFor({ timeout: LONG });
    assert.equal(await page.getByTestId('user-message').count(), 1, 'later turns dropped');
    assert.equal(await page.getByTestId('assistant-message').count(), 1);
    let saved = await savedChats(page);
    assert.deepEqual(saved[0].messages.map((m) => m.content.slice(0, 20)).slice(0, 1), ['What color is grass?']);
    assert.equal(saved[0].messages.length, 2);

    // Esc stops the reply; the streaming reply is an aria-live region. Shift+Enter is a newline.
    await settings(page, { temperature: 0, maxTokens: 400 });
    await page.getByTestId('settings-close').click();
    await page.setViewportSize({ width: 1280, height: 420 });
    await page.getByTestId('prompt-input').fill('Write a long story');
    await page.getByTestId('prompt-input').press('Shift+Enter');
    await page.getByTestId('prompt-input').pressSequentially('about a lighthouse.');
    assert.equal(await page.getByTestId('prompt-input').inputValue(), 'Write a long story\nabout a lighthouse.');
    await page.getByTestId('prompt-input').press('Enter');
    await page.getByTestId('stop-button').waitFor({ timeout: 10_000 });
    assert.equal(await page.locator('.msg.assistant.streaming[aria-live=polite]').count(), 1, 'streaming reply is aria-live');
    await page.waitForFunction(() => (document.querySelectorAll('[data-testid=assistant-message]')[1]?.textContent || '').length > 10, null, { timeout: LONG });
    // Auto-scroll follows the reply at the bottom, and stops once the reader scrolls up.
    const list = page.getByTestId('messages');
    await page.waitForFunction(() => { const e = document.querySelector('[data-testid=messages]'); return e.scrollHeight > e.clientHeight + 150; }, null, { timeout: LONG });
    assert.ok(await page.getByTestId('stop-button').isVisible(), 'still streaming');
    const gap = () => list.evaluate((e) => e.scrollHeight - e.scrollTop - e.clientHeight);
    assert.ok(await gap() < 48, `follows the bottom while streaming (${await gap()} px from it)`);
    await list.evaluate((e) => { e.scrollTop = 0; });
    const grown = await list.evaluate((e) => e.scrollHeight);
    await page.waitForFunction((h) => document.querySelector('[data-testid=messages]').scrollHeight > h + 20, grown, { timeout: LONG });
    assert.equal(await list.evaluate((e) => e.scrollTop), 0, 'scrolled up: the view stays where the reader put it');
    await page.keyboard.press('Escape');
    await page.getByTestId('send-button').waitFor({ timeout: 5_000 });
    assert.match(await page.getByTestId('reply-stats').last().innerText(), /cancelled/);
    await page.setViewportSize({ width: 1280, height: 800 });

    // Conversations: newest first, search, switch, rename, delete + undo.
    await settings(page, { temperature: 0, maxTokens: 4 });
    await page.getByTestId('settings-close').click();
    await page.getByTestId('new-chat').click();
    await ask(page, 'Name a fruit.');
    const titles = () => page.getByTestId('conv-open').allInnerTexts();
    assert.deepEqual(await titles(), ['Name a fruit.', 'What color is grass?'], 'newest first');
    await page.getByTestId('conv-search').fill('LIGHTHOUSE');
    assert.deepEqual(await titles(), ['What color is grass?'], 'search finds message text');
    await page.getByTestId('conv-search').fill('');
    await page.getByTestId('conv-open').filter({ hasText: 'grass' }).click();
    assert.equal(await page.getByTestId('user-message').first().innerText(), 'What color is grass?');
    assert.equal(await page.getByTestId('user-message').count(), 2);
    // Settings belong to the conversation: changed here, the other keeps its own.
    await settings(page, { temperature: 0.5, maxTokens: 4 });
    await page.getByTestId('conv-open').filter({ hasText: 'fruit' }).click();
    assert.equal(await page.getByTestId('temperature').inputValue(), '0');
    await page.getByTestId('conv-open').filter({ hasText: 'grass' }).click();
    assert.equal(await page.getByTestId('temperature').inputValue(), '0.5');
    assert.equal((await savedChats(page)).find((c) => c.title.includes('grass')).settings.temperature, 0.5, 'stored with it');
    await page.getByTestId('settings-reset').click();
    assert.equal(await page.getByTestId('temperature').inputValue(), '0.7', 'reset to the defaults');
    assert.equal(await page.getByTestId('context-size').inputValue(), '2048', 'context size reset too');
    await page.getByTestId('settings-close').click();
    await page.getByTestId('conv-item').filter({ hasText: 'grass' }).getByTestId('conv-rename').click();
    await page.getByTestId('conv-rename-input').fill('Colours');
    await page.getByTestId('conv-rename-input').press('Enter');
    assert.deepEqual(await titles(), ['Name a fruit.', 'Colours']);
    assert.equal((await savedChats(page)).find((c) => c.title === 'Colours')?.messages.length, 4, 'rename stored');
    await page.getByTestId('conv-item').first().getByTestId('conv-delete').click();
    await page.getByTestId('undo-toast').waitFor();
    assert.deepEqual(await titles(), ['Colours']);
    assert.equal((await savedChats(page)).length, 1, 'deleted from storage');
    await page.getByTestId('undo-button').click();
    assert.deepEqual(await titles(), ['Name a fruit.', 'Colours'], 'undo puts it back in its place');
    assert.equal((await savedChats(page)).length, 2, 'and in storage');

    // Export → import round trip (JSON), and the open conversation as Markdown.
    const before = await savedChats(page);
    const [dl] = await Promise.all([page.waitForEvent('download'), page.getByTestId('export-json').click()]);
    const exportFile = await dl.path();
    assert.deepEqual(JSON.parse(readFileSync(exportFile, 'utf8')), before, 'the export holds every conversation');
    const [md] = await Promise.all([page.waitForEvent('download'), page.getByTestId('export-md').click()]);
    const mdText = readFileSync(await md.path(), 'utf8');
    assert.ok(mdText.startsWith('# Colours\n') && mdText.includes('## User\n\nWhat color is grass?'), mdText);
    await page.getByTestId('conv-delete').first().click();
    await page.getByTestId('conv-delete').first().click();
    assert.deepEqual(await savedChats(page), []);
    await page.getByTestId('import-conversations').setInputFiles(exportFile);
    await page.waitForFunction(() => document.querySelectorAll('[data-testid=conv-item]').length === 2);
    assert.deepEqual(await titles(), ['Name a fruit.', 'Colours'], 'imported back in order');
    assert.deepEqual(await savedChats(page), before, 'imported conversations equal the exported ones');

    // Phone: no horizontal scroll, the sidebar slides over and closes.
    await page.setViewportSize({ width: 390, height: 844 });
    const sw = () => page.evaluate(() => document.documentElement.scrollWidth);
    assert.ok(await sw() <= 390, `no horizontal scroll at 390 px (${await sw()})`);
    assert.ok(!(await page.getByTestId('sidebar').isVisible()), 'sidebar hidden on a phone');
    assert.ok(await page.getByTestId('prompt-input').isVisible(), 'the chat is on screen');
    await page.getByTestId('sidebar-toggle').click();
    await page.getByTestId('conv-search').waitFor();
    assert.ok(await sw() <= 390, 'no horizontal scroll with the sidebar open');
    await page.getByTestId('conv-open').filter({ hasText: 'fruit' }).click();
    await page.getByTestId('sidebar').waitFor({ state: 'hidden' });
    assert.equal(await page.getByTestId('user-message').first().innerText(), 'Name a fruit.');
    await page.getByTestId('sidebar-toggle').click();
    await page.getByTestId('conv-search').waitFor();
    await page.mouse.click(380, 400);
    await page.getByTestId('sidebar').waitFor({ state: 'hidden' });
    await page.getByTestId('settings-toggle').click();
    await page.getByTestId('temperature').waitFor();
    assert.ok(await sw() <= 390, 'no horizontal scroll with the settings open');
    await page.getByTestId('settings-close').click();
    const shots = process.env.SLM_E2E_SHOTS;
    assert.deepEqual(await axeViolations(page), [], 'axe: phone, dark');
    if (shots) await page.screenshot({ path: join(shots, 'phone-dark.png') });
    await page.setViewportSize({ width: 1280, height: 800 });
    assert.deepEqual(await axeViolations(page), [], 'axe: desktop, dark');
    if (shots) await page.screenshot({ path: join(shots, 'desktop-dark.png') });
    await page.getByTestId('theme-toggle').click();
    assert.deepEqual(await axeViolations(page), [], 'axe: desktop, light');
    if (shots) await page.screenshot({ path: join(shots, 'desktop-light.png') });
  } finally {
    await b.close();
  }
}

async function modelsFlow() {
  log('first run: capability check and a recommended model, one click to chat; the model manager judges each card before any download; delete from a card');
  const b = await launch({ webgpu: false });
  try {
    // A catalog with the app's own model, a 1.5 GB one (too slow for this CPU to recommend, as
    // the probe shows) and a 5 GB one (beyond the CPU engine's 4 GiB wasm memory).
    await b.page.route('**/models.json', async (route) => {
      const r = await route.fetch();
      const cat = await r.json();
      const own = cat.models.find((m) => m.default);
      const big = (id, label) => ({ ...own, id, name: id, url: `https://huggingface.co/x/${id}.gguf`, size: null, size_label: label, sha256: null, default: false, backends: ['cpu'] });
      cat.models = [own, big('mid-1500mb', 'about 1.5 GB'), big('huge-5gb', 'about 5.0 GB')];
      await route.fulfill({ response: r, json: cat });
    });
    await open(b.page);
    const first = b.page.getByTestId('first-run');
    await first.waitFor({ timeout: 30_000 });
    const caps = {};
    for (const k of ['cap-webgpu', 'cap-isolation', 'cap-storage', 'cap-speed']) caps[k] = await first.getByTestId(k).innerText();
    log('capabilities:', JSON.stringify(caps));
    assert.match(caps['cap-webgpu'], /not available/);
    assert.match(caps['cap-isolation'], /Cross-origin isolated: yes · \d+ cores/);
    assert.match(caps['cap-storage'], /free for this site/);
    const rate = Number((caps['cap-speed'].match(/([\d.]+) ([KMG]B)\/s/) || []).slice(1, 2)[0]);
    assert.ok(rate > 0, 'the CPU probe ran: ' + caps['cap-speed']);
    const rec = first.getByTestId('first-run-model');
    log('advice:', await rec.innerText());
    assert.equal(await rec.getAttribute('data-model-id'), 'smollm2-135m-instruct-q4_1', 'the fast model is recommended, not the 1.5 GB one');
    const t0 = Date.now();
    await first.getByTestId('first-run-start').click();
    await waitLoaded(b.page);
    log(`downloaded and loaded in ${((Date.now() - t0) / 1e3).toFixed(1)} s`);
    assert.equal(await b.page.getByTestId('first-run').count(), 0, 'the check is gone once started');
    await settings(b.page, { temperature: 0, maxTokens: 32 });
    const r = await ask(b.page, QUESTION);
    log('reply:', JSON.stringify(r.reply), r.stats);
    assert.match(r.reply.toLowerCase(), /blue/);

    // The manager: every card judged on this device.
    await b.page.getByTestId('models-open').click();
    const mgr = b.page.getByTestId('model-manager');
    await mgr.getByTestId('model-card').first().waitFor({ timeout: 30_000 });
    const card = (id) => mgr.locator(`[data-testid=model-card][data-model-id="${id}"]`);
    const own = card('smollm2-135m-instruct-q4_1');
    assert.equal(await own.getAttribute('data-verdict'), 'Fits');
    assert.match(await own.innerText(), /Stored on this device/);
    const expected = await own.getByTestId('expected-speed').innerText();
    const exp = Number(expected.match(/about (\d+) tokens\/s/)[1]);
    const measured = Number(r.stats.match(/decode ([\d.]+) tok\/s/)[1]);
    log(`expected ${exp} tok/s before download vs measured decode ${measured} tok/s (ratio ${(measured / exp).toFixed(2)})`);
    assert.ok(measured / exp > 0.33 && measured / exp < 3, 'the estimate is within 3× of the real speed');
    assert.equal(await card('mid-1500mb').getAttribute('data-verdict'), 'Fits');
    assert.equal(await card('huge-5gb').getAttribute('data-verdict'), 'TooLarge');
    assert.match(await card('huge-5gb').getByTestId('fit-why').innerText(), /4 GiB of wasm memory/);
    assert.ok(await card('huge-5gb').getByTestId('card-use').isDisabled(), 'a model that cannot fit is not offered');
    assert.deepEqual(await axeViolations(b.page), [], 'axe: model manager');

    // Delete from the card: storage is emptied, the card offers the download again.
    await own.getByTestId('card-delete').click();
    await b.page.waitForFunction(() => !document.querySelector('[data-testid=model-card][data-model-id="smollm2-135m-instruct-q4_1"] [data-testid=card-delete]'), null, { timeout: 10_000 });
    assert.match(await card('smollm2-135m-instruct-q4_1').getByTestId('card-use').innerText(), /Download and use/);
    assert.equal((await idbState(b.page)).chunks, 0, 'no chunks left');
    await mgr.getByTestId('models-close').click();
    assert.equal(await b.page.getByTestId('model-manager').count(), 0);
    const extra = b.requests.filter((u) => !u.startsWith(BASE) && !u.startsWith('data:') && !u.startsWith('blob:'));
    assert.deepEqual(extra, [], 'nothing but the app and its model was requested');
  } finally {
    await b.close();
  }
}

/// Reload with the network off (playwright's setOffline), load the stored model and chat; the
/// server sees no request meanwhile, and a request the service worker does not answer fails.
async function chatOffline(b, logUrl) {
  const mark = logUrl ? (await (await fetch(logUrl)).text()).split('\n').filter(Boolean).length : 0;
  await b.ctx.setOffline(true);
  await b.page.reload();
  await b.page.getByTestId('model-select').waitFor();
  assert.equal(await b.page.evaluate(() => crossOriginIsolated), true, 'offline page is cross-origin isolated');
  assert.equal(await b.page.evaluate(() => fetch('__offline_probe').then(() => 'ok', () => 'failed')), 'failed', 'the network is off');
  await b.page.getByTestId('backend-select').selectOption('cpu');
  await b.page.waitForFunction(() => document.querySelector('[data-testid=download-button]')?.textContent.includes('Load'));
  await downloadAndLoad(b.page);
  await settings(b.page, { temperature: 0, maxTokens: 16 });
  const r = await ask(b.page, QUESTION);
  log('offline reply:', JSON.stringify(r.reply));
  assert.match(r.reply.toLowerCase(), /blue/, 'answered offline from the stored model');
  if (logUrl) {
    // The browser's own update check of the service worker script is not covered by
    // setOffline (it comes from the browser process): every other request is.
    const after = (await (await fetch(logUrl)).text()).split('\n').filter(Boolean).slice(mark)
      .filter((l) => !l.startsWith('GET /sw.js '));
    assert.deepEqual(after, [], 'no request reached the server while offline');
  }
  await b.ctx.setOffline(false);
}

/// Wait until the page (which may reload itself once) is cross-origin isolated.
async function waitIsolated(page) {
  const t0 = Date.now();
  while (Date.now() - t0 < 30_000) {
    const ok = await page.evaluate(() => crossOriginIsolated && !!navigator.serviceWorker.controller).catch(() => false);
    if (ok) return;
    await page.waitForTimeout(200);
  }
  throw new Error('the page never became cross-origin isolated');
}

async function offlineFlow() {
  log('offline: after one visit (service worker installed) the app reloads with the network off and chats from the stored model; a new deploy shows the update notice');
  const b = await launch({ webgpu: false });
  try {
    await open(b.page);
    assert.equal(await b.page.evaluate(() => document.querySelector('link[rel=manifest]')?.getAttribute('href')), 'manifest.webmanifest');
    const manifest = await b.page.evaluate(() => fetch('manifest.webmanifest').then((r) => r.json()));
    assert.equal(manifest.display, 'standalone', 'installable: a standalone web app manifest');
    await b.page.getByTestId('backend-select').selectOption('cpu');
    await downloadAndLoad(b.page);
    await b.page.evaluate(() => navigator.serviceWorker.ready);
    const cached = await b.page.evaluate(async () => (await (await caches.open('slm-shell-v1')).keys()).map((r) => new URL(r.url).pathname));
    log('cached:', cached.join(' '));
    for (const f of ['/', '/web-ui_bg.wasm', '/web-ui.js', '/worker.js', '/style.css', '/models.json']) assert.ok(cached.includes(f), `shell file ${f} cached`);
    assert.ok(!cached.some((p) => p.includes('.gguf')), 'no model bytes in the service worker cache');
    assert.equal(await b.page.getByTestId('update-notice').count(), 0, 'no update notice at the first install');
    // A new version is deployed while the page is open: the update check finds it and a small
    // notice says it applies at the next visit.
    await fetch(new URL('__deploy', BASE));
    await b.page.evaluate(async () => (await navigator.serviceWorker.getRegistration()).update());
    const notice = b.page.getByTestId('update-notice');
    await notice.waitFor({ timeout: 20_000 });
    log('update notice:', await notice.innerText());
    assert.match(await notice.innerText(), /new version of the app is ready/);
    await notice.getByRole('button', { name: 'Dismiss' }).click();
    assert.equal(await notice.count(), 0);
    await chatOffline(b, new URL('__log', BASE));
  } finally {
    await b.close();
  }
}

async function distFlow() {
  log('cargo xtask dist --out DIR, served by python3 -m http.server (no COOP/COEP headers): isolated through its service worker, downloads, chats, then offline');
  const out = mkdtempSync(join(tmpdir(), 'slm-dist-'));
  const repo = join(dirname(fileURLToPath(import.meta.url)), '..');
  execFileSync('cargo', ['xtask', 'dist', '--no-build', '--out', out], { cwd: repo, stdio: 'inherit' });
  for (const f of ['index.html', 'sw.js', 'manifest.webmanifest', '_headers', 'nginx.conf', `models/${MODEL_FILE}`]) {
    assert.ok(statSync(join(out, f)).size > 0, `dist has ${f}`);
  }
  const port = 8190 + Math.floor(Math.random() * 50);
  const py = spawn('python3', ['-m', 'http.server', String(port), '--bind', '127.0.0.1', '--directory', out], { stdio: 'ignore' });
  const url = `http://127.0.0.1:${port}/`;
  const b = await launch({ webgpu: false });
  try {
    for (let i = 0; i < 50; i++) { if (await fetch(url).then(() => true, () => false)) break; await new Promise((r) => setTimeout(r, 100)); }
    const resp = await b.page.goto(url);
    assert.equal(resp.headers()['cross-origin-embedder-policy'], undefined, 'the host sends no isolation headers');
    await waitIsolated(b.page);
    await b.page.getByTestId('model-select').waitFor();
    assert.equal(await b.page.evaluate(() => typeof SharedArrayBuffer), 'function', 'SharedArrayBuffer available');
    await b.page.getByTestId('backend-select').selectOption('cpu');
    await downloadAndLoad(b.page);
    await settings(b.page, { temperature: 0, maxTokens: 16 });
    const r = await ask(b.page, QUESTION);
    assert.match(r.reply.toLowerCase(), /blue/);
    await b.page.evaluate(() => navigator.serviceWorker.ready);
    await chatOffline(b, null);
  } finally {
    await b.close();
    py.kill();
    rmSync(out, { recursive: true, force: true });
  }
}

// gpu: needs WebGPU (SwiftShader, slow): run only when named in SLM_E2E_ONLY.
// ---- The embeddable widget and the host-page API (issue 11) ----
// Host pages are served by this script from a second origin, http://localhost:SLM_HOST_PORT,
// without COOP/COEP; the app server allows that origin to embed it (`--embed-origins`), while
// http://127.0.0.1:SLM_HOST_PORT (same server, another origin) stays refused.
const HOST_PORT = Number(process.env.SLM_HOST_PORT || 8105);
const HOST = `http://localhost:${HOST_PORT}`;
const REFUSED_HOST = `http://127.0.0.1:${HOST_PORT}`;
const APP_ORIGIN = new URL(BASE).origin;
const SAME_SITE_APP = `http://localhost:${new URL(BASE).port}`;
const MODEL_ID = 'smollm2-135m-instruct-q4_1';
const HOST_CONTENT = '<h1 id="wiki-title">Team handbook</h1><p id="wiki-text">Holidays are booked in the HR tool.</p>';
const hostLog = [];
let hostServer = null;

function hostPage(body) {
  return `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Intranet</title></head>` +
    `<body><main id="content">${HOST_CONTENT}</main>${body}</body></html>`;
}
const HOST_PAGES = {
  '/widget.html': () => hostPage(`<script src="${BASE}embed.js" data-model="${MODEL_ID}" data-title="Ask the handbook" data-temperature="0" data-max-tokens="160" async></script>`),
  '/inline.html': () => hostPage(`<slm-chat model="${MODEL_ID}" title="Inline" temperature="0" max-tokens="16" style="display:block;height:520px"></slm-chat><script src="${BASE}embed.js" async></script>`),
  '/api.html': () => hostPage(`<script src="${BASE}embed.js"></script>`),
  '/blank.html': () => hostPage(''),
  // The app at http://localhost:APP_PORT: another origin of the same site as the host page.
  '/samesite.html': () => hostPage(`<script src="${SAME_SITE_APP}/embed.js" data-model="${MODEL_ID}" data-title="Same site" data-temperature="0" data-max-tokens="24" async></script>`),
};

async function startHost() {
  if (hostServer) return;
  const http = await import('node:http');
  hostServer = http.createServer((req, res) => {
    hostLog.push(`${req.method} ${req.headers.host}${req.url}`);
    const page = HOST_PAGES[req.url.split('?')[0]];
    if (!page) { res.writeHead(404); res.end('not found'); return; }
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-cache' });
    res.end(page());
  });
  await new Promise((res, rej) => { hostServer.once('error', rej); hostServer.listen(HOST_PORT, res); });
  hostServer.unref();
}

/// Every request the browser made went to the app or the host page (nothing anywhere else).
function onlyAppAndHost(requests) {
  const other = requests.filter((u) => ![APP_ORIGIN, SAME_SITE_APP, HOST, REFUSED_HOST].some((o) => u.startsWith(o + '/')));
  assert.deepEqual(other, [], 'no request to any other origin');
}

/// Ask in the widget's frame `f` (a FrameLocator); returns the reply, its stats and how many
/// distinct lengths were seen while it streamed.
async function askIn(page, f, text) {
  const before = await f.getByTestId('assistant-message').count();
  await f.getByTestId('prompt-input').fill(text);
  await f.getByTestId('send-button').click();
  await f.getByTestId('stop-button').waitFor({ timeout: 10_000 });
  const lengths = new Set();
  const t0 = Date.now();
  while (Date.now() - t0 < LONG) {
    if (await f.getByTestId('assistant-message').count() > before) lengths.add((await f.getByTestId('assistant-message').nth(before).innerText()).length);
    if (!(await f.getByTestId('stop-button').isVisible().catch(() => false))) break;
    await page.waitForTimeout(50);
  }
  await f.getByTestId('send-button').waitFor({ timeout: LONG });
  return {
    reply: await f.getByTestId('assistant-message').nth(before).innerText(),
    stats: await f.getByTestId('reply-stats').last().innerText(),
    distinct: lengths.size,
  };
}

async function waitFrameLoaded(page, f) {
  const seen = new Set();
  const t0 = Date.now();
  while (Date.now() - t0 < LONG) {
    // The bar may go away between the two calls (the download ended): never wait for it.
    const v = await f.getByTestId('download-progress').getAttribute('value', { timeout: 200 }).catch(() => null);
    if (v !== null) seen.add(Number(v));
    if (await f.getByTestId('prompt-input').isEnabled().catch(() => false)) break;
    if (await f.getByTestId('error-banner').first().isVisible().catch(() => false)) {
      throw new Error('widget error banner: ' + await f.getByTestId('error-banner').first().innerText());
    }
    await page.waitForTimeout(100);
  }
  assert.ok(await f.getByTestId('prompt-input').isEnabled(), 'the widget is ready');
  return [...seen].sort((a, b) => a - b);
}

/// The host page's own markup, and what embed.js added to <body>.
async function hostDom(page) {
  return page.evaluate(() => ({
    content: document.getElementById('content').innerHTML,
    added: [...document.body.children].filter((c) => c.id !== 'content' && c.tagName !== 'SCRIPT' && c.tagName !== 'SLM-CHAT')
      .map((c) => c.tagName + [...c.attributes].map((a) => `[${a.name}]`).join('')),
    head: document.head.children.length,
  }));
}

async function widgetFlow() {
  log(`widget flow: ${HOST}/widget.html (no COOP/COEP) embeds the app of ${APP_ORIGIN}`);
  await startHost();
  const b = await launch({ webgpu: false, thirdPartyStorage: true });
  try {
    const resp = await b.page.goto(`${HOST}/widget.html`);
    assert.equal(resp.headers()['cross-origin-embedder-policy'], undefined, 'host page without COEP');
    assert.equal(await b.page.evaluate(() => crossOriginIsolated), false, 'host page is not cross-origin isolated');
    const headBefore = await b.page.evaluate(() => document.head.children.length);
    await b.page.getByTestId('slm-launcher').click();
    const f = b.page.frameLocator('iframe[src*="embed.html"]');
    await f.getByTestId('embed-storage-note').waitFor({ timeout: 30_000 });
    log('first-run note:', JSON.stringify((await f.getByTestId('embed-first-run').innerText()).slice(0, 160)));
    assert.equal(await f.getByTestId('embed-title').innerText(), 'Ask the handbook');
    assert.equal(await b.page.evaluate(() => document.querySelector('[data-slm-launcher]').shadowRoot.querySelector('iframe').contentDocument), null,
      'the host page cannot reach into the widget');
    await f.getByTestId('download-button').click();
    const seen = await waitFrameLoaded(b.page, f);
    log('widget download progress values:', seen.length, 'max', Math.max(...seen));
    assert.ok(seen.length >= 2 && Math.max(...seen) >= 99.9, 'the panel showed the download progress to 100%');
    assert.ok(b.requests.some((u) => u.startsWith(APP_ORIGIN) && u.includes(MODEL_FILE)), 'the model came from the app origin');
    onlyAppAndHost(b.requests);

    const r = await askIn(b.page, f, QUESTION);
    log('widget reply:', JSON.stringify(r.reply), '|', r.stats, '| streamed updates:', r.distinct);
    assert.ok(r.distinct >= 2, 'the reply streamed');
    // Without isolation the frame runs the single-threaded build: one thread, no "×N".
    const frame = b.page.frames().find((fr) => fr.url().includes('embed.html'));
    assert.equal(await frame.evaluate(() => crossOriginIsolated), false, 'the widget frame is not cross-origin isolated');
    assert.match(r.stats, / · CPU$/, 'the widget computes on one CPU thread');
    const expect = process.env.SLM_E2E_EXPECT_PREFIX;
    if (expect) assert.ok(r.reply.trim().startsWith(expect), `reply starts with slm's ${JSON.stringify(expect)}`);
    else assert.match(r.reply.toLowerCase(), /blue/);
    if (process.env.SLM_E2E_WIDGET_SCREENSHOT) await b.page.screenshot({ path: process.env.SLM_E2E_WIDGET_SCREENSHOT });

    // Stop, on a host page that is not cross-origin isolated.
    await f.getByTestId('prompt-input').fill('Write a long story about a lighthouse keeper and a storm.');
    await f.getByTestId('send-button').click();
    await f.getByTestId('stop-button').waitFor({ timeout: 10_000 });
    const streaming = f.getByTestId('assistant-message').nth(1);
    const t0 = Date.now();
    while ((await streaming.innerText().catch(() => '')).length < 20) {
      assert.ok(Date.now() - t0 < 60_000, 'the story streams');
      await b.page.waitForTimeout(20);
    }
    const tStop = Date.now();
    await f.getByTestId('stop-button').click();
    await f.getByTestId('send-button').waitFor({ timeout: 5_000 });
    const stopStats = await f.getByTestId('reply-stats').last().innerText();
    log(`widget stop after ${Date.now() - tStop} ms: ${stopStats}`);
    assert.match(stopStats, /\(cancelled\)/, 'Stop ended the reply');

    // The host page: only the launcher was added.
    const dom = await hostDom(b.page);
    assert.equal(dom.content, HOST_CONTENT, "the host page's content is untouched");
    assert.deepEqual(dom.added, ['DIV[data-slm-launcher]'], 'embed.js added the launcher only');
    assert.equal(dom.head, headBefore, 'nothing added to <head>');

    // Reload: the model comes from this site's storage; the chat makes no request at all.
    const appMark = (await serverLog()).length;
    b.requests.length = 0;
    hostLog.length = 0;
    await b.page.reload();
    await b.page.getByTestId('slm-launcher').click();
    await waitFrameLoaded(b.page, f);
    assert.deepEqual(b.requests.filter((u) => u.includes(MODEL_FILE)), [], 'no request for the model after reload');
    assert.deepEqual((await serverLog()).slice(appMark).filter((l) => l.includes(MODEL_FILE)), []);
    onlyAppAndHost(b.requests);
    log('reload: requests while opening the widget:', b.requests.length, '(app files only)');
    // The conversation continues: it was kept in this site's storage.
    const restored = await f.getByTestId('user-message').allInnerTexts();
    log('restored after reload:', restored.length, 'questions');
    assert.ok(restored.length >= 1 && restored[0].includes(QUESTION), 'the earlier conversation is shown again');
    assert.equal(await f.getByTestId('assistant-message').first().innerText(), r.reply, 'with its reply');
    // A new conversation for the next question.
    await f.getByTestId('embed-new-chat').click();
    assert.equal(await f.getByTestId('user-message').count(), 0, 'New chat cleared it');
    const mark = (await serverLog()).length;
    b.requests.length = 0;
    hostLog.length = 0;
    const x = await askIn(b.page, f, XSS_PROMPT);
    log('widget reply to the HTML prompt:', JSON.stringify(x.reply));
    assert.deepEqual(b.requests, [], 'no browser request while chatting in the widget');
    assert.deepEqual((await serverLog()).slice(mark), [], 'no app-server request while chatting');
    assert.deepEqual(hostLog, [], 'no host-server request while chatting');
    assert.match(x.reply, /<img[^>]*onerror=/, 'the model wrote an <img … onerror=…> tag');
    assert.equal(await f.getByTestId('messages').locator('img, script, iframe').count(), 0, 'the reply is shown as text');
    await b.page.waitForTimeout(300);
    assert.deepEqual(b.dialogs, [], 'no script ran');

    // The inline element on another page of the same site: the stored model, no download.
    await b.page.goto(`${HOST}/inline.html`);
    const g = b.page.frameLocator('slm-chat iframe');
    await waitFrameLoaded(b.page, g);
    const i = await askIn(b.page, g, QUESTION);
    log('inline <slm-chat> reply:', JSON.stringify(i.reply), '|', i.stats);
    assert.ok(i.reply.trim().length > 0 && /\(max_tokens\)/.test(i.stats), 'the inline chat answers (max-tokens=16)');
    assert.equal(await g.getByTestId('user-message').count(), 1, 'the inline chat (another title) has its own conversation');
    onlyAppAndHost(b.requests);
    // New chat clears it, here and in storage.
    await g.getByTestId('embed-new-chat').click();
    assert.equal(await g.getByTestId('user-message').count(), 0, 'New chat cleared the conversation');
    await b.page.evaluate(() => new Promise((r) => setTimeout(r, 300)));
    await b.page.reload();
    await waitFrameLoaded(b.page, g);
    assert.equal(await g.getByTestId('user-message').count(), 0, 'and it stays cleared after a reload');
  } finally {
    await b.close();
  }
}

/// What `slm generate --json` reports for `messages` (the engine's own token counts).
function slmGenerate(messages, maxTokens) {
  const bin = process.env.SLM_BIN || join(dirname(fileURLToPath(import.meta.url)), '..', 'target', 'release', 'slm');
  try { statSync(bin); } catch { return null; }
  const out = execFileSync(bin, ['generate', '--model', join(MODELS_DIR, MODEL_FILE), '--temperature', '0', '--max-tokens', String(maxTokens),
    '--json', '--messages', JSON.stringify(messages)], { encoding: 'utf8' });
  const lines = out.trim().split('\n').map((l) => JSON.parse(l));
  return { text: lines.filter((l) => 'text' in l).map((l) => l.text).join(''), summary: lines.at(-1) };
}

async function apiFlow() {
  log(`api flow: SLM.connect from ${HOST}/api.html`);
  await startHost();
  const b = await launch({ webgpu: false, thirdPartyStorage: true });
  try {
    await b.page.goto(`${HOST}/api.html`);
    const connected = await b.page.evaluate(async (model) => {
      const progress = [];
      window.slm = await SLM.connect({ model, backend: 'cpu', onProgress: (p) => progress.push(p) });
      return { progress, backend: window.slm.backend, model: window.slm.model };
    }, MODEL_ID);
    const dl = connected.progress.filter((p) => p.phase === 'downloading');
    log('connect:', connected.backend, connected.model, '| progress events:', connected.progress.length,
      '| last download event:', JSON.stringify(dl.at(-1)), '| phases:', [...new Set(connected.progress.map((p) => p.phase))].join(', '));
    assert.ok(dl.length >= 2 && dl.at(-1).loaded === dl.at(-1).total && dl.at(-1).total > 0, 'download progress reached the total');
    assert.ok(connected.progress.some((p) => p.phase.startsWith('loading')), 'load progress reported');
    assert.equal(connected.backend, 'cpu');

    const model = MODEL_ID;
    const models = await b.page.evaluate(() => slm.models.list());
    const mine = models.data.find((m) => m.id === model);
    log('models.list:', models.data.length, 'models;', JSON.stringify(mine));
    assert.ok(mine && mine.stored === true, 'the connected model is listed as stored');
    assert.ok(models.data.some((m) => m.stored === false), 'catalog models not stored are listed too');

    const messages = [{ role: 'system', content: 'You are a helpful assistant.' }, { role: 'user', content: QUESTION }];
    const mark = (await serverLog()).length;
    b.requests.length = 0;
    hostLog.length = 0;
    const plain = await b.page.evaluate((messages) => slm.chat.completions.create({ messages, temperature: 0, max_tokens: 24 }), messages);
    log('plain:', JSON.stringify(plain.choices[0].message.content), plain.choices[0].finish_reason, JSON.stringify(plain.usage));
    const expect = process.env.SLM_E2E_EXPECT_PREFIX;
    if (expect) assert.ok(plain.choices[0].message.content.trim().startsWith(expect), `starts with slm's ${JSON.stringify(expect)}`);
    assert.equal(plain.object, 'chat.completion');
    assert.equal(plain.choices[0].finish_reason, 'length');
    const native = slmGenerate(messages, 24);
    if (native) {
      log('slm generate --json:', JSON.stringify(native.summary));
      assert.equal(plain.usage.prompt_tokens, native.summary.n_prompt, 'prompt_tokens as the engine counts them');
      assert.equal(plain.usage.completion_tokens, native.summary.n_generated, 'completion_tokens as the engine counts them');
    } else {
      assert.equal(plain.usage.completion_tokens, 24);
    }

    const streamed = await b.page.evaluate(async (messages) => {
      const stream = await slm.chat.completions.create({ messages, temperature: 0, max_tokens: 24, stream: true });
      const parts = [];
      let last = null;
      for await (const chunk of stream) {
        parts.push(chunk.choices[0].delta.content || '');
        last = chunk;
      }
      return { parts, last };
    }, messages);
    log('stream:', streamed.parts.length, 'chunks; finish', streamed.last.choices[0].finish_reason, JSON.stringify(streamed.last.usage));
    assert.ok(streamed.parts.length >= 3, 'several chunks');
    assert.equal(streamed.parts.join(''), plain.choices[0].message.content, 'streamed text = plain text');
    assert.equal(streamed.last.choices[0].finish_reason, 'length');
    assert.deepEqual(streamed.last.usage, plain.usage);

    // Abort a stream mid-way; the next request works.
    const aborted = await b.page.evaluate(async () => {
      const ctrl = new AbortController();
      const stream = await slm.chat.completions.create({ messages: [{ role: 'user', content: 'Write a long story about a lighthouse keeper.' }],
        temperature: 0, max_tokens: 400, stream: true, signal: ctrl.signal });
      let text = '';
      try {
        for await (const c of stream) {
          text += c.choices[0].delta.content || '';
          if (text.length > 30) ctrl.abort();
        }
        return { text, error: null };
      } catch (e) {
        return { text, error: { name: e.name, code: e.code, isSLM: e instanceof SLM.Error } };
      }
    });
    log('aborted stream:', JSON.stringify(aborted));
    assert.equal(aborted.error && aborted.error.code, 'aborted', 'the stream ends with aborted');
    assert.ok(aborted.error.isSLM);
    assert.ok(aborted.text.length < 600, 'stopped long before max_tokens');

    // Three requests together, the third aborted while queued: each answered for itself.
    const together = await b.page.evaluate(async (messages) => {
      const ctrl = new AbortController();
      const a = slm.chat.completions.create({ messages, temperature: 0, max_tokens: 24 });
      const b2 = slm.chat.completions.create({ messages: [{ role: 'user', content: 'What is 2 + 2?' }], temperature: 0, max_tokens: 12 });
      const c = slm.chat.completions.create({ messages: [{ role: 'user', content: 'Name a fruit.' }], max_tokens: 12, signal: ctrl.signal });
      ctrl.abort();
      const s = await Promise.allSettled([a, b2, c]);
      return s.map((x) => (x.status === 'fulfilled' ? { text: x.value.choices[0].message.content } : { code: x.reason.code }));
    }, messages);
    log('together:', JSON.stringify(together));
    assert.equal(together[0].text, plain.choices[0].message.content, 'the first gets its own answer');
    assert.ok(together[1].text && together[1].text !== together[0].text, 'the second gets its own answer');
    assert.equal(together[2].code, 'aborted', 'the aborted one is aborted');
    assert.deepEqual(b.requests, [], 'no browser request while using the API');
    assert.deepEqual((await serverLog()).slice(mark), [], 'no app-server request while using the API');
    assert.deepEqual(hostLog, [], 'no host-server request');

    // Typed errors: a bad request through the API, an unknown model, raw malformed messages.
    const bad = await b.page.evaluate(async () => {
      const out = {};
      try { await slm.chat.completions.create({ messages: [{ role: 'tool', content: 'x' }] }); } catch (e) { out.role = e.code; }
      try { await slm.chat.completions.create({ messages: [{ role: 'user', content: 'x' }], temperature: 9 }); } catch (e) { out.temperature = e.code; }
      try { await SLM.connect({ model: 'no-such-model' }); } catch (e) { out.model = e.code; }
      const frame = document.querySelector('[data-slm-api]').shadowRoot.querySelector('iframe');
      const replies = [];
      const on = (e) => { if (e.source === frame.contentWindow) replies.push(JSON.parse(e.data)); };
      window.addEventListener('message', on);
      const app = new URL(frame.src).origin;
      frame.contentWindow.postMessage({ not: 'a string' }, app);
      frame.contentWindow.postMessage('{"slm":1,"id":77,"type":"chat","messages":[]}', app);
      frame.contentWindow.postMessage('{"slm":1,"id":78,"type":"eval","code":"alert(1)"}', app);
      frame.contentWindow.postMessage('x'.repeat(600000), app);
      await new Promise((r) => setTimeout(r, 500));
      window.removeEventListener('message', on);
      out.raw = replies.map((m) => `${m.id}:${m.type}:${m.error && m.error.code}`);
      return out;
    });
    log('errors:', JSON.stringify(bad));
    assert.deepEqual({ role: bad.role, temperature: bad.temperature, model: bad.model }, { role: 'bad_request', temperature: 'bad_request', model: 'model_not_found' });
    assert.deepEqual(bad.raw, ['0:error:bad_request', '77:error:bad_request', '78:error:bad_request', '0:error:bad_request']);

    // A message from a wrong origin (a frame of 127.0.0.1 inside the allowed page, next to an
    // API frame) is refused.
    await b.page.evaluate(async ({ api, evil }) => {
      const f = document.createElement('iframe');
      f.src = api;
      const ready = new Promise((r) => window.addEventListener('message', (e) => { if (e.source === f.contentWindow) r(); }));
      document.body.append(f);
      await ready;
      const g = document.createElement('iframe');
      g.src = evil;
      await new Promise((r) => { g.onload = r; document.body.append(g); });
    }, { api: new URL('embed.html?mode=api', BASE).href, evil: `${REFUSED_HOST}/blank.html` });
    const evil = b.page.frames().find((fr) => fr.url().startsWith(REFUSED_HOST));
    const refused = await evil.evaluate(async (app) => {
      const replies = [];
      window.addEventListener('message', (e) => replies.push(`${e.origin} ${e.data}`));
      for (let i = 0; i < parent.frames.length; i++) {
        try { parent.frames[i].postMessage('{"slm":1,"id":5,"type":"models.list"}', app); } catch { /* not the app */ }
      }
      await new Promise((r) => setTimeout(r, 500));
      return replies;
    }, APP_ORIGIN);
    log('wrong-origin message answered with:', JSON.stringify(refused));
    assert.ok(refused.length >= 1 && refused.every((r) => r.includes('"code":"not_allowed"')), 'a wrong origin gets not_allowed and nothing else');
    await b.page.waitForTimeout(200);
    assert.deepEqual(b.dialogs, [], 'nothing was evaluated');
  } finally {
    await b.close();
  }
}

/// The deployment that works even where a browser blocks third-party storage (this Chromium's
/// default profile, corporate policies): the app on another origin of the host page's site
/// (e.g. slm.intranet.example for wiki.intranet.example; here localhost:APP for
/// localhost:HOST). The frame is then not third-party: it stores the model, and the app's own
/// page on that site shares the copy.
async function sameSiteFlow() {
  log(`same-site widget: ${HOST}/samesite.html embeds ${SAME_SITE_APP} in the default profile (third-party storage blocked)`);
  await startHost();
  const b = await launch({ webgpu: false });
  try {
    await b.page.goto(`${HOST}/samesite.html`);
    await b.page.getByTestId('slm-launcher').click();
    const f = b.page.frameLocator('iframe[src*="embed.html"]');
    await f.getByTestId('embed-storage-note').waitFor({ timeout: 30_000 });
    assert.equal(await f.getByTestId('embed-storage-blocked').count(), 0, 'storage is allowed for a same-site frame');
    await f.getByTestId('download-button').click();
    await waitFrameLoaded(b.page, f);
    const r = await askIn(b.page, f, QUESTION);
    log('same-site widget reply:', JSON.stringify(r.reply), '|', r.stats);
    const expect = process.env.SLM_E2E_EXPECT_PREFIX;
    if (expect) assert.ok(r.reply.trim().startsWith(expect.slice(0, 24)), `reply starts with slm's ${JSON.stringify(expect.slice(0, 24))}`);
    else assert.match(r.reply.toLowerCase(), /blue/);
    // Reload: the model from storage, the conversation back, and a chat sends nothing.
    await b.page.evaluate(() => new Promise((r) => setTimeout(r, 300)));
    b.requests.length = 0;
    await b.page.reload();
    await b.page.getByTestId('slm-launcher').click();
    await waitFrameLoaded(b.page, f);
    assert.deepEqual(b.requests.filter((u) => u.includes(MODEL_FILE)), [], 'no request for the model after reload');
    assert.equal((await f.getByTestId('user-message').allInnerTexts())[0], QUESTION, 'the conversation continues');
    const mark = (await serverLog()).length;
    b.requests.length = 0;
    const t = await askIn(b.page, f, 'And at sunset?');
    log('second question after reload:', JSON.stringify(t.reply));
    assert.deepEqual(b.requests, [], 'no browser request while chatting');
    assert.deepEqual((await serverLog()).slice(mark), [], 'no app-server request while chatting');
    // The app's own page on the same site finds the model the widget stored, and lists none of
    // the widget's conversations.
    await b.page.goto(`${SAME_SITE_APP}/`);
    await b.page.getByTestId('stored-models').getByText(/SmolLM2/).first().waitFor({ timeout: 30_000 });
    log("the app's page on the same site lists the widget's stored model");
    assert.equal(await b.page.getByTestId('conv-item').count(), 0, "the widget's conversation is not in the app's list");
    onlyAppAndHost(b.requests);
  } finally {
    await b.close();
  }
}

async function embedRefusedFlow() {
  log(`embed refused: ${REFUSED_HOST} is not on the allowed list`);
  await startHost();
  const r = await fetch(new URL('embed.html', BASE));
  const csp = r.headers.get('content-security-policy');
  log('embed.html CSP frame-ancestors:', /frame-ancestors [^;]*/.exec(csp)[0]);
  assert.ok(csp.includes(`frame-ancestors 'self' ${HOST}`), 'frame-ancestors lists the allowed host');
  assert.ok(!csp.includes(REFUSED_HOST), 'and not the refused one');
  const app = await (await fetch(new URL('/', BASE))).text();
  assert.ok(app.length > 0);
  const appCsp = (await fetch(new URL('/', BASE))).headers.get('content-security-policy');
  assert.match(appCsp, /frame-ancestors 'none'/, "the app's own page still cannot be framed");
  const b = await launch({ webgpu: false });
  try {
    await b.page.goto(`${REFUSED_HOST}/widget.html`);
    await b.page.getByTestId('slm-launcher').click();
    const msg = await b.page.getByTestId('slm-not-allowed').innerText();
    log('panel:', JSON.stringify(msg));
    assert.match(msg, /Not allowed here/);
    await b.page.goto(`${REFUSED_HOST}/api.html`);
    const code = await b.page.evaluate(() => SLM.connect({ model: 'smollm2-135m-instruct-q4_1' }).then(() => 'connected', (e) => e.code));
    log('SLM.connect on a refused origin:', code);
    assert.equal(code, 'not_allowed');
    // Framing embed.html directly (without embed.js's check): the browser refuses it.
    await b.page.evaluate((src) => {
      const f = document.createElement('iframe');
      f.src = src;
      document.body.append(f);
    }, new URL('embed.html?mode=chat', BASE).href);
    await b.page.waitForTimeout(3000);
    const mounted = await b.page.frameLocator('iframe[src*="embed.html"]').getByTestId('embed-title').count();
    assert.equal(mounted, 0, 'the browser did not render the widget for a refused origin');
    // On the allowed origin the same frame renders.
    await b.page.goto(`${HOST}/blank.html`);
    await b.page.evaluate((src) => {
      const f = document.createElement('iframe');
      f.src = src;
      document.body.append(f);
    }, new URL('embed.html?mode=chat', BASE).href);
    await b.page.frameLocator('iframe[src*="embed.html"]').getByTestId('embed-title').waitFor({ timeout: 30_000 });
    log('the same frame renders on the allowed origin');
    // This Chromium's default profile blocks third-party storage: the widget says so (and links
    // the chat in its own tab) instead of failing at the download.
    await b.page.goto(`${HOST}/widget.html`);
    await b.page.getByTestId('slm-launcher').click();
    const blocked = await b.page.frameLocator('iframe[src*="embed.html"]').getByTestId('embed-storage-blocked').innerText({ timeout: 30_000 });
    log('storage blocked:', JSON.stringify(blocked.split('\n')[0]));
    assert.match(blocked, /blocks storage/);
  } finally {
    await b.close();
  }
}

// A prompt long enough for prefill speed to mean something (~170 tokens with the template).
const BENCH_PROMPT = 'Summarize this in one sentence: The lighthouse stood on a rocky island at the '
  + 'mouth of the bay, and for ninety years its keepers had climbed the spiral stairs every evening '
  + 'to light the lamp. Ships coming home from the northern fishing grounds watched for its beam, '
  + 'which swept across the water every twelve seconds. In winter storms the waves broke over the '
  + 'gallery, and the keepers kept a log of every vessel that passed, the weather, the state of the '
  + 'sea and the hours the lamp burned. When the light was finally automated, the last keeper '
  + 'carried the logbooks down the stairs, locked the door behind him and rowed to the mainland, '
  + 'where the town museum now keeps them in a glass case beside his brass telescope.';

/// The CPU engine's build and threads as the status chip shows them.
async function cpuThreads(page) {
  const el = page.getByTestId('cpu-threads');
  await el.waitFor({ timeout: LONG });
  return { build: await el.getAttribute('data-build'), threads: Number(await el.getAttribute('data-threads')), kernels: await el.getAttribute('data-kernels'), text: await el.innerText() };
}

/// Prefill and decode speeds from a reply's stats line.
function speeds(stats) {
  const num = (re) => Number((re.exec(stats) || [])[1]);
  return { prefill: num(/prefill ([\d.]+) tok\/s/), decode: num(/decode ([\d.]+) tok\/s/) };
}

async function threadsFlow() {
  log('CPU engine threads: cross-origin isolated → the multi-threaded build; the same replies at 2 and 1 threads, and close in the single-threaded build; speeds');
  const b = await launch({ webgpu: false });
  try {
    // ?threads=2: at least two threads however many cores this machine has.
    const openWith = async (query, isolated) => {
      const resp = await b.page.goto(new URL(query, BASE).href);
      if (isolated) assert.equal(resp.headers()['cross-origin-embedder-policy'], 'require-corp');
      await b.page.getByTestId('model-select').waitFor();
      assert.equal(await b.page.evaluate(() => crossOriginIsolated), isolated, `cross-origin isolated: ${isolated}`);
      await b.page.getByTestId('backend-select').selectOption('cpu');
    };
    await openWith('?threads=2', true);
    await downloadAndLoad(b.page);
    const mt = await cpuThreads(b.page);
    log('threads chip:', mt, '| badge:', await b.page.getByTestId('backend-badge').innerText());
    assert.equal(mt.build, 'threads', 'the multi-threaded build runs on an isolated page');
    assert.ok(mt.threads >= 2, `at least 2 threads (${mt.threads})`);
    await settings(b.page, { temperature: 0, maxTokens: 48 });
    const r = await ask(b.page, QUESTION);
    log('reply (2 threads):', JSON.stringify(r.reply), r.stats);
    assert.match(r.stats, /CPU ×2/, 'the stats line names the threads');
    // The pool's other thread computed part of the products (not the caller alone).
    const helped = Number(await b.page.getByTestId('reply-stats').last().getAttribute('data-helped-chunks'));
    log('matrix-product chunks computed by the other thread:', helped);
    assert.ok(helped > 0, 'the second thread takes part');
    const expect = process.env.SLM_E2E_EXPECT_PREFIX;
    if (expect) assert.ok(r.reply.trim().startsWith(expect), `reply starts with slm's ${JSON.stringify(expect)}`);
    assert.match(r.reply.toLowerCase(), /blue/, 'the sky is blue');

    // The same prompt at 1 thread and in the single-threaded relaxed-SIMD build (a page that is
    // not isolated): the same reply; in the plain simd128 build (?simd=plain: a browser without
    // relaxed SIMD) a reply that agrees for at least SAME_BUILD_MIN characters; and the speeds of
    // a longer prompt, in one run. SLM_E2E_BENCH_ROUNDS repeats the measurement (alternating the
    // configurations). The plain build computes the same integer block sums as relaxed SIMD's
    // dot but adds them into floats in another lane order, so a greedy reply may part at a
    // near-tie, as the CPU and GPU replies do.
    assert.equal(mt.kernels, 'relaxed-simd', 'the multi-threaded build has the relaxed-SIMD kernels');
    const configs = [
      { name: 'threaded build, 2 threads', query: '?threads=2', isolated: true, build: 'threads', threads: 2, kernels: 'relaxed-simd' },
      { name: 'threaded build, 1 thread', query: '?threads=1', isolated: true, build: 'threads', threads: 1, kernels: 'relaxed-simd' },
      { name: 'single-threaded build', query: '?isolation=off', isolated: false, build: 'single', threads: 1, kernels: 'relaxed-simd' },
      { name: 'single-threaded plain simd128 build', query: '?isolation=off&simd=plain', isolated: false, build: 'single', threads: 1, kernels: 'simd128' },
    ];
    const SAME_BUILD_MIN = 100;
    const common = (x, y) => { let i = 0; while (i < x.length && i < y.length && x[i] === y[i]) i++; return i; };
    const rounds = Number(process.env.SLM_E2E_BENCH_ROUNDS || 1);
    const results = [];
    const benchReply = {};
    for (let round = 0; round < rounds; round++) {
      for (const c of configs) {
        await openWith(c.query, c.isolated);
        await b.page.waitForFunction(() => document.querySelector('[data-testid=download-button]')?.textContent.includes('Load'));
        await downloadAndLoad(b.page);
        const t = await cpuThreads(b.page);
        assert.equal(t.build, c.build, `${c.name}: build`);
        assert.equal(t.threads, c.threads, `${c.name}: threads`);
        assert.equal(t.kernels, c.kernels, `${c.name}: kernels`);
        // The saved conversation is shown before New chat (else it could replace the new one).
        await b.page.getByTestId('assistant-message').first().waitFor({ timeout: LONG });
        if (round === 0) {
          await b.page.getByTestId('new-chat').click();
          await b.page.waitForFunction(() => !document.querySelector('[data-testid=assistant-message]'));
          await settings(b.page, { temperature: 0, maxTokens: 48 });
          const same = await ask(b.page, QUESTION);
          // The same text (the first reply may have run past 48 tokens when the setting landed
          // after the send: compare up to the shorter one).
          const [short, long] = [same.reply, r.reply].sort((x, y) => x.length - y.length);
          if (c.kernels === 'relaxed-simd') {
            assert.ok(short.length > 40 && long.startsWith(short), `${c.name}: the same reply as with 2 threads: ${JSON.stringify(same.reply)}`);
          } else {
            const n = common(short, long);
            log(`${c.name}: agrees with the multi-threaded build for ${n} of ${short.length} characters`);
            assert.ok(n >= Math.min(SAME_BUILD_MIN, short.length) && short.length > 40, `${c.name}: the multi-threaded build's reply for ${SAME_BUILD_MIN} characters: ${JSON.stringify(same.reply)}`);
          }
        }
        await b.page.getByTestId('new-chat').click();
        await b.page.waitForFunction(() => !document.querySelector('[data-testid=assistant-message]'));
        await settings(b.page, { temperature: 0, maxTokens: 64 });
        const bench = await ask(b.page, BENCH_PROMPT);
        benchReply[c.kernels] ??= bench.reply;
        assert.equal(bench.reply, benchReply[c.kernels], `${c.name}: the same long reply as with these kernels before`);
        const s = speeds(bench.stats);
        const h = await b.page.getByTestId('reply-stats').last().getAttribute('data-helped-chunks');
        log(`bench ${c.name}: prefill ${s.prefill} tok/s, decode ${s.decode} tok/s | ${bench.stats} | chunks by the other thread: ${h}`);
        results.push({ ...c, ...s });
      }
    }
    for (const c of configs) {
      const rs = results.filter((x) => x.name === c.name);
      const best = (k) => Math.max(...rs.map((x) => x[k]));
      log(`speed ${c.name}: prefill ${best('prefill')} tok/s, decode ${best('decode')} tok/s (best of ${rs.length})`);
    }
  } finally {
    await b.close();
  }
}

const flows = {
  main: { run: mainFlow },
  resume: { run: resumeFlow },
  checksum: { run: checksumFlow },
  xss: { run: xssFlow },
  regenerate: { run: regenerateFlow },
  stop: { run: stopFlow },
  conversation: { run: conversationFlow },
  hub: { run: hubFlow },
  cancel: { run: cancelFlow },
  import: { run: importFlow },
  hostile: { run: hostileFlow },
  gemma3: { run: gemma3Flow },
  quota: { run: quotaFlow },
  ui: { run: uiFlow },
  models: { run: modelsFlow },
  offline: { run: offlineFlow },
  dist: { run: distFlow },
  gpulost: { run: gpuLostFlow, gpu: true },
  widget: { run: widgetFlow },
  api: { run: apiFlow },
  embedrefused: { run: embedRefusedFlow },
  samesite: { run: sameSiteFlow },
  threads: { run: threadsFlow },
};
const wanted = only ? only.split(',').map((n) => n.trim()).filter(Boolean) : null;
for (const n of wanted || []) if (!flows[n]) { log(`unknown flow ${n}; flows: ${Object.keys(flows).join(', ')}`); process.exit(2); }
let failed = 0;
for (const [name, f] of Object.entries(flows)) {
  if (wanted ? !wanted.includes(name) : f.gpu) continue;
  const t0 = Date.now();
  try {
    await f.run();
    log(`PASS ${name} (${((Date.now() - t0) / 1e3).toFixed(1)} s)`);
  } catch (e) {
    failed++;
    log(`FAIL ${name} (${((Date.now() - t0) / 1e3).toFixed(1)} s):`, e.stack || e);
  }
}
process.exit(failed ? 1 : 0);
