// Starts the app: the wasm module's main() mounts the Leptos page. The theme the user chose
// (localStorage `slm.theme`, JSON) is applied first so the page does not flash.
// The page always runs the single-threaded build (web-ui.js, with the UI); on a cross-origin
// isolated page the engine's worker runs the multi-threaded engine-only build (see worker.js).
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
  reg.then(watchUpdates, () => {});
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

// A new version deployed while this page is open: the browser finds a changed sw.js (on its own
// update checks, or `registration.update()`), installs it, and this notice says that the new
// version applies at the next visit (or now, with Reload). Not shown at the first install.
function watchUpdates(reg) {
  reg.addEventListener('updatefound', () => {
    // A worker already controls the page (or is active): this is an update, not the first install.
    const w = reg.installing;
    if (!w || !(navigator.serviceWorker.controller || reg.active)) return;
    w.addEventListener('statechange', () => {
      if ((w.state === 'installed' || w.state === 'activated') && !document.querySelector('[data-testid=update-notice]')) showUpdateNotice();
    });
  });
}

function showUpdateNotice() {
  const n = document.createElement('div');
  n.className = 'update-notice';
  n.setAttribute('role', 'status');
  n.dataset.testid = 'update-notice';
  const text = document.createElement('span');
  text.textContent = 'A new version of the app is ready: it applies the next time you open it.';
  const reload = document.createElement('button');
  reload.textContent = 'Reload now';
  reload.dataset.testid = 'update-reload';
  reload.addEventListener('click', () => location.reload());
  const close = document.createElement('button');
  close.className = 'dismiss';
  close.textContent = '×';
  close.setAttribute('aria-label', 'Dismiss');
  close.addEventListener('click', () => n.remove());
  n.append(text, reload, close);
  document.body.append(n);
}
