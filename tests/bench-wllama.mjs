// The reference for `cargo xtask bench --browser`: wllama (llama.cpp in wasm, npm
// `@wllama/wllama`, a dev dependency of these tests) on the same GGUF in the same headless
// Chromium, CPU only, llama-bench's shape (a ~128-token prompt, 128 generated with EOS ignored,
// median of 3), from llama.cpp's own slot timings. One JSON line, the same fields as
// `bench.mjs`. The page is served cross-origin isolated by this script, so wllama may use
// `SLM_BENCH_THREADS` threads.
//   SLM_BENCH_MODEL=PATH [SLM_BENCH_THREADS=N] node bench-wllama.mjs
import { createReadStream, statSync } from 'node:fs';
import { createServer } from 'node:http';
import { basename, dirname, join, normalize } from 'node:path';
import { fileURLToPath } from 'node:url';
import { launchBrowser, sampleMemory, settledPss } from './bench-common.mjs';

const MODEL = process.env.SLM_BENCH_MODEL;
const THREADS = Number(process.env.SLM_BENCH_THREADS || 1);
const N_GEN = Number(process.env.SLM_BENCH_GEN || 128);
const REPS = Number(process.env.SLM_BENCH_REPS || 3);
if (!MODEL) { console.error('SLM_BENCH_MODEL=PATH is required'); process.exit(2); }
const ESM = join(dirname(fileURLToPath(import.meta.url)), 'node_modules', '@wllama', 'wllama', 'esm');

const PAGE = `<!doctype html><meta charset="utf-8"><title>wllama bench</title><script type="module">
import { Wllama } from '/wllama/index.js';
window.bench = async (threads, nGen, reps) => {
  const w = new Wllama({ default: '/wllama/wasm/wllama.wasm' }, { suppressNativeLog: true });
  const blob = await (await fetch('/model.gguf')).blob();
  const t0 = performance.now();
  await w.loadModel([blob], { n_threads: threads, n_ctx: 1024, n_batch: 512, n_gpu_layers: 0 });
  const load_s = (performance.now() - t0) / 1e3;
  const run = async (words) => {
    const prompt = Array.from({ length: words }, (_, i) => ['river', 'stone', 'quiet', 'lamp', 'garden', 'paper'][i % 6]).join(' ');
    const r = await w.createCompletion({ prompt, max_tokens: nGen, temperature: 0, ignore_eos: true, cache_prompt: false });
    return r.timings;
  };
  // About 128 prompt tokens: one calibration run, then the timed ones.
  const cal = await run(128);
  const words = Math.max(1, Math.round(128 * 128 / cal.prompt_n));
  const pp = [], tg = [];
  let n_prompt = 0, n_gen = 0;
  for (let i = 0; i < reps; i++) {
    const t = await run(words);
    pp.push(t.prompt_per_second); tg.push(t.predicted_per_second);
    n_prompt = t.prompt_n; n_gen = t.predicted_n;
  }
  const med = (v) => v.sort((a, b) => a - b)[v.length >> 1];
  return { load_s, n_prompt, n_gen, prefill_tok_s: med(pp), decode_tok_s: med(tg), isolated: crossOriginIsolated };
};
window.ready = true;
</script>`;

const server = createServer((req, res) => {
  const url = new URL(req.url, 'http://x');
  const headers = { 'Cross-Origin-Opener-Policy': 'same-origin', 'Cross-Origin-Embedder-Policy': 'require-corp' };
  let file = null;
  let type = 'application/octet-stream';
  if (url.pathname === '/') { res.writeHead(200, { ...headers, 'content-type': 'text/html' }); res.end(PAGE); return; }
  if (url.pathname === '/model.gguf') file = MODEL;
  else if (url.pathname.startsWith('/wllama/')) {
    file = join(ESM, normalize(url.pathname.slice('/wllama/'.length)).replace(/^(\.\.[/\\])+/, ''));
    if (file.endsWith('.js')) type = 'text/javascript';
    if (file.endsWith('.wasm')) type = 'application/wasm';
  }
  try { statSync(file); } catch { res.writeHead(404); res.end(); return; }
  res.writeHead(200, { ...headers, 'content-type': type, 'content-length': statSync(file).size });
  createReadStream(file).pipe(res);
});
await new Promise((r) => server.listen(0, '127.0.0.1', r));
const base = `http://127.0.0.1:${server.address().port}/`;

const { dir, page, close } = await launchBrowser('slm-bench-wllama-');
try {
  await page.goto(base);
  await page.waitForFunction(() => window.ready === true);
  await page.waitForTimeout(1000);
  const { total: baseline, by: baselineBy } = await settledPss(dir);
  const memory = sampleMemory(dir);
  const r = await page.evaluate(([t, g, n]) => window.bench(t, g, n), [THREADS, N_GEN, REPS]);
  const { peak, by: peakBy } = memory.stop();
  console.log(JSON.stringify({
    model: basename(MODEL),
    engine: 'wllama',
    backend: 'cpu',
    threads: THREADS,
    isolated: r.isolated,
    prompt_tokens: r.n_prompt,
    gen_tokens: r.n_gen,
    prefill_tok_s: Number(r.prefill_tok_s.toFixed(2)),
    decode_tok_s: Number(r.decode_tok_s.toFixed(2)),
    load_s: Number(r.load_s.toFixed(2)),
    peak_mem_mib: Math.round(peak),
    // The peak sample split by process kind (renderer: page, workers, wasm memory).
    peak_mem_by_process: peakBy,
    baseline_mem_mib: Math.round(baseline),
    baseline_mem_by_process: baselineBy,
  }));
} finally {
  await close();
  server.close();
}
