// What the benchmarks (bench.mjs, bench-wllama.mjs) share: a fresh headless Chromium, and the
// memory of all its processes.
import { chromium } from 'playwright-core';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const CHROME = process.env.CHROMIUM || '/usr/lib/chromium/chromium';

/// Chromium (Debian's, headless) with a fresh profile in a temporary folder `dir`; `page` logs
/// uncaught errors; `close()` ends it and removes the profile.
export async function launchBrowser(prefix) {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  const ctx = await chromium.launchPersistentContext(dir, {
    executablePath: CHROME, headless: true,
    args: ['--no-sandbox', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run', '--headless=new'],
  });
  const page = ctx.pages()[0] || await ctx.newPage();
  page.on('pageerror', (e) => console.error('pageerror:', e.message));
  const close = async () => { await ctx.close(); rmSync(dir, { recursive: true, force: true }); };
  return { dir, page, close };
}

/// Summed PSS of the process whose command line holds `marker` and its descendants, split by
/// Chromium process kind: `{ total, by: { renderer, gpu, storage, utility, browser } }` (MiB; the
/// renderer holds the page, its workers and the wasm memory; storage is the utility process of
/// IndexedDB). Each call walks /proc and the kernel walks each process's mappings: sample it
/// sparingly (the benchmarks do every 500 ms), it costs CPU the measured browser shares.
const roots = new Map();
export function browserPss(marker) {
  const parent = new Map();
  let root = roots.get(marker) ?? null;
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const stat = readFileSync(`/proc/${d}/stat`, 'utf8');
      parent.set(Number(d), Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]));
      if (root === null && readFileSync(`/proc/${d}/cmdline`, 'utf8').includes(marker)) { root = Number(d); roots.set(marker, root); }
    } catch { /* gone */ }
  }
  const by = {};
  if (root === null) return { total: 0, by };
  const inTree = (pid) => { for (let p = pid; p > 1; p = parent.get(p)) if (p === root) return true; return false; };
  let kb = 0;
  for (const pid of parent.keys()) {
    if (!inTree(pid)) continue;
    try {
      const m = /^Pss:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8'));
      if (!m) continue;
      kb += Number(m[1]);
      const cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
      const type = /--type=([a-z-]+)/.exec(cmd)?.[1] ?? 'browser';
      const kind = type === 'gpu-process' ? 'gpu'
        : type === 'utility' && cmd.includes('StorageService') ? 'storage'
          : type === 'zygote' ? 'browser' : type;
      by[kind] = (by[kind] ?? 0) + Number(m[1]) / 1024;
    } catch { /* gone */ }
  }
  for (const k of Object.keys(by)) by[k] = Math.round(by[k]);
  return { total: kb / 1024, by };
}

/// Samples the browser's memory (marker `dir`) every 500 ms until `stop()`, which takes a last
/// sample and returns the peak `{ peak, by }` (MiB; `by` split as browserPss).
export function sampleMemory(dir) {
  let peak = 0;
  let by = {};
  const sample = () => {
    const m = browserPss(dir);
    if (m.total > peak) { peak = m.total; by = m.by; }
  };
  const timer = setInterval(sample, 500);
  return { stop() { clearInterval(timer); sample(); return { peak, by }; } };
}

/// The browser's memory (as browserPss) once it has settled: sampled every 500 ms until two
/// samples 1 s apart differ by under 4 MiB (at most 20 s). After a reload the previous page's
/// engine (its wasm memory, shared with its pool threads) is freed asynchronously; a baseline
/// taken before that would hide the new load's memory.
export async function settledPss(marker) {
  const t0 = Date.now();
  let prev = browserPss(marker);
  for (;;) {
    await new Promise((r) => setTimeout(r, 1000));
    const m = browserPss(marker);
    if (Math.abs(m.total - prev.total) < 4 || Date.now() - t0 > 20_000) return m;
    prev = m;
  }
}
