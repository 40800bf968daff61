// Starts the widget page (embed.html): the theme comes from the frame's URL (`theme=light|dark`,
// anything else follows the system), then the wasm module's main() mounts the widget.
import init from './web-ui.js';
const t = new URLSearchParams(location.search).get('theme');
if (t === 'dark' || t === 'light') document.documentElement.dataset.theme = t;
init({ module_or_path: './web-ui_bg.wasm' });
