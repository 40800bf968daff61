// Starts the app: the wasm module's main() mounts the Leptos page. The theme the user chose
// (localStorage `slm.theme`, JSON) is applied first so the page does not flash.
import init from './web-ui.js';
try {
  const t = JSON.parse(localStorage.getItem('slm.theme') || 'null');
  if (t === 'dark' || t === 'light') document.documentElement.dataset.theme = t;
} catch { /* storage blocked: follow the system */ }

// The service worker (sw.js): the app shell offline, and cross-origin isolation where the host
// sends no COOP/COEP headers. Such a page reloads once, when the worker controls it, so that
// the worker's headers apply (threads and SharedArrayBuffer then work). ?isolation=off opts out.
const isolationOff = new URLSearchParams(location.search).get('isolation') === 'off';
let started = false;
const start = () => { if (!started) { started = true; init({ module_or_path: './web-ui_bg.wasm' }); } };
if ('serviceWorker' in navigator && window.isSecureContext) {
  const reg = navigator.serviceWorker.register('./sw.js');
  if (!crossOriginIsolated && !isolationOff && !sessionStorage.getItem('slm.coi-reloaded')) {
    const reload = () => { sessionStorage.setItem('slm.coi-reloaded', '1'); location.reload(); };
    reg.then(() => {
      if (navigator.serviceWorker.controller) reload();
      else navigator.serviceWorker.addEventListener('controllerchange', reload);
    }, start);
    // A worker that never takes control (blocked, private mode): start without isolation.
    setTimeout(start, 4000);
  } else {
    reg.catch(() => {});
    start();
  }
} else {
  start();
}

// Syntax highlighting of the code blocks under `root`, with highlight.js (public/vendor/),
// imported on first use so it is not part of the first load. Called by the app for each
// finished reply; blocks already highlighted are skipped. Resolves to the number highlighted.
let hljs;
globalThis.slmHighlight = async (root) => {
  const blocks = [...root.querySelectorAll('pre code:not(.hljs)')];
  if (!blocks.length) return 0;
  hljs ??= (await import('./vendor/highlight.min.js')).default;
  hljs.configure({ ignoreUnescapedHTML: true });
  for (const b of blocks) {
    // An unknown language name makes highlight.js throw: that block stays plain.
    try { if (b.isConnected) hljs.highlightElement(b); } catch { b.classList.add('hljs'); }
  }
  return blocks.length;
};
