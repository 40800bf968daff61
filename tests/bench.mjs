// `cargo xtask bench --browser --model PATH [--threads N]`: llama-bench's pp/tg of a GGUF in
// headless Chromium through the app's real worker (the file is imported into IndexedDB like a
// user's, then loaded from there on the CPU engine), printing one JSON line:
// {"model", "threads", "prefill_tok_s", "decode_tok_s", "load_s", "peak_mem_mib", ...}.
// peak_mem_mib is the peak of the summed PSS of the browser's processes (sampled every 500 ms)
// from the load to the end of the benchmark; baseline_mem_mib is the same sum just before the
// load (Chromium and the app without a model).
import { basename } from 'node:path';
import { launchBrowser, sampleMemory, settledPss } from './bench-common.mjs';

const BASE = process.env.SLM_URL || 'http://127.0.0.1:8080/';
const MODEL = process.env.SLM_BENCH_MODEL;
const THREADS = Number(process.env.SLM_BENCH_THREADS || 1);
const N_PROMPT = Number(process.env.SLM_BENCH_PROMPT || 128);
const N_GEN = Number(process.env.SLM_BENCH_GEN || 128);
const REPS = Number(process.env.SLM_BENCH_REPS || 3);
// The context wllama's comparison runs with (bench-wllama.mjs), so both hold the same KV cache.
const N_CTX = Number(process.env.SLM_BENCH_CTX || 1024);
const LONG = 900_000;
if (!MODEL) { console.error('SLM_BENCH_MODEL=PATH is required'); process.exit(2); }

async function waitReady(page) {
  const t0 = Date.now();
  while (Date.now() - t0 < LONG) {
    if (await page.getByTestId('prompt-input').isEnabled().catch(() => false)) return;
    if (await page.getByTestId('error-banner').first().isVisible().catch(() => false)) {
      throw new Error('error banner: ' + await page.getByTestId('error-banner').first().innerText());
    }
    await page.waitForTimeout(50);
  }
  throw new Error('the model did not load');
}

const { dir, page, close } = await launchBrowser('slm-bench-');
try {
  const url = new URL(BASE);
  url.searchParams.set('threads', String(THREADS));
  await page.goto(url.href);
  await page.getByTestId('backend-select').selectOption('cpu');
  await page.locator('details.add-model summary').click();
  await page.getByTestId('import-file').setInputFiles(MODEL);
  await waitReady(page);
  // The context size is kept with the conversation, so the timed load below uses it too.
  if (!(await page.locator('details.settings').evaluate((d) => d.open))) await page.locator('details.settings summary').click();
  await page.getByTestId('context-size').fill(String(N_CTX));
  await page.getByTestId('context-size').dispatchEvent('change');
  await page.getByTestId('context-size-hint').filter({ hasText: `now running with ${N_CTX} tokens` }).waitFor({ timeout: LONG });
  await waitReady(page);
  // Timed: a fresh page loading the stored model (what every later visit does).
  await page.reload();
  await page.getByTestId('backend-select').selectOption('cpu');
  await page.waitForTimeout(1000);
  const { total: baseline, by: baselineBy } = await settledPss(dir);
  const memory = sampleMemory(dir);
  const t0 = Date.now();
  await page.getByTestId('stored-models').locator('li', { hasText: basename(MODEL) }).getByTestId('stored-load').click();
  await waitReady(page);
  const loadS = (Date.now() - t0) / 1e3;
  const r = await page.evaluate(([p, g, n]) => window.__slm_test.bench(p, g, n), [N_PROMPT, N_GEN, REPS]);
  const { peak, by: peakBy } = memory.stop();
  console.log(JSON.stringify({
    model: basename(MODEL),
    engine: 'slm',
    backend: r.backend,
    threads: r.threads,
    threads_requested: THREADS,
    n_ctx: N_CTX,
    prompt_tokens: r.n_prompt,
    gen_tokens: r.n_gen,
    prefill_tok_s: r.prefill_tok_s,
    decode_tok_s: r.decode_tok_s,
    load_s: Number(loadS.toFixed(2)),
    peak_mem_mib: Math.round(peak),
    // The engine worker's wasm memory at the end (its peak: wasm memory never shrinks).
    wasm_memory_mib: r.wasm_memory_mib,
    // The peak sample split by process kind (renderer: page, workers, wasm memory).
    peak_mem_by_process: peakBy,
    // The browser with the app open and no model loaded, for reading peak_mem_mib.
    baseline_mem_mib: Math.round(baseline),
    baseline_mem_by_process: baselineBy,
  }));
} finally {
  await close();
}
