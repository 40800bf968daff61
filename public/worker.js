// The engine's Web Worker: the same wasm module as the page; main() sees no window and
// returns, then worker_main() listens for load/generate messages.
import init, { worker_main } from './web-ui.js';
await init({ module_or_path: './web-ui_bg.wasm' });
worker_main();
