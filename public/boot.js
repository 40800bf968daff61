// Starts the app: the wasm module's main() mounts the Leptos page. The theme the user chose
// (localStorage `slm.theme`, JSON) is applied first so the page does not flash.
import init from './web-ui.js';
try {
  const t = JSON.parse(localStorage.getItem('slm.theme') || 'null');
  if (t === 'dark' || t === 'light') document.documentElement.dataset.theme = t;
} catch { /* storage blocked: follow the system */ }
init({ module_or_path: './web-ui_bg.wasm' });

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
