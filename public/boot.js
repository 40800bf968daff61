// Starts the app: the wasm module's main() mounts the Leptos page.
import init from './web-ui.js';
init({ module_or_path: './web-ui_bg.wasm' });
