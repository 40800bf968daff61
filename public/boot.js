// Starts the app: the wasm module's main() mounts the Leptos page. The theme the user chose
// (localStorage `slm.theme`, JSON) is applied first so the page does not flash.
import init from './web-ui.js';
try {
  const t = JSON.parse(localStorage.getItem('slm.theme') || 'null');
  if (t === 'dark' || t === 'light') document.documentElement.dataset.theme = t;
} catch { /* storage blocked: follow the system */ }
init({ module_or_path: './web-ui_bg.wasm' });
