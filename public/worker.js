// The engine's Web Worker: the same wasm module as the page; main() sees no window and
// returns, then worker_main() listens for load/generate messages.
//
// Two builds of that module: web-ui.js (single-threaded, with the UI: what the page runs) and
// web-ui-mt.js (atomics + shared memory, the engine worker alone, built without the `ui` feature:
// the CPU engine's thread pool runs on Web Workers, pool-worker.js).
// The multi-threaded one needs SharedArrayBuffer, i.e. a cross-origin isolated page; anywhere
// else (a host page without COOP/COEP embedding the widget) the single-threaded one runs.
// Threads: navigator.hardwareConcurrency, at most MAX_THREADS; `?threads=N` (passed on from the
// page's URL) overrides it, for tests and benchmarks.
const MAX_THREADS = 8;

// wgpu does not hand out the JavaScript GPUDevice it requests, so record the adapter and device
// here (self.__slm_gpu): the worker names the adapter from its info when wgpu finds no name,
// watches device.lost to move the model to the CPU, and its test hook (LoseGpu) calls destroy().
if (self.GPUAdapter && GPUAdapter.prototype.requestDevice) {
  const requestDevice = GPUAdapter.prototype.requestDevice;
  GPUAdapter.prototype.requestDevice = async function (...args) {
    const device = await requestDevice.apply(this, args);
    self.__slm_gpu = { adapter: this, device };
    return device;
  };
}

const asked = Number(new URL(self.location.href).searchParams.get('threads'));
const threads = Number.isInteger(asked) && asked >= 1
  ? Math.min(asked, 64)
  : Math.max(1, Math.min(navigator.hardwareConcurrency || 1, MAX_THREADS));

let engine = null;
if (self.crossOriginIsolated) {
  try {
    engine = await import('./web-ui-mt.js');
    await engine.default({ module_or_path: './web-ui-mt_bg.wasm' });
  } catch (e) {
    console.warn('multi-threaded engine unavailable, using the single-threaded one:', e);
    engine = null;
  }
}
if (!engine) {
  engine = await import('./web-ui.js');
  await engine.default({ module_or_path: './web-ui_bg.wasm' });
}
engine.worker_main(threads);
