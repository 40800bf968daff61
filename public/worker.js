// The engine's Web Worker: the same wasm module as the page; main() sees no window and
// returns, then worker_main() listens for load/generate messages.
//
// Two builds of that module: web-ui.js (single-threaded, with the UI: what the page runs) and
// web-ui-mt.js (atomics + shared memory, the engine worker alone, built without the `ui` feature:
// the CPU engine's thread pool runs on Web Workers, pool-worker.js).
// The multi-threaded one needs SharedArrayBuffer, i.e. a cross-origin isolated page, and relaxed
// SIMD (its 8-bit dot products); anywhere else (a host page without COOP/COEP embedding the
// widget, a browser without relaxed SIMD) the module fails to load and the single-threaded one runs.
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

// A one-function module using i16x8.relaxed_dot_i8x16_i7x16_s: whether relaxed SIMD compiles
// here, checked before fetching the multi-threaded module that needs it.
const RELAXED_SIMD_PROBE = new Uint8Array([
  0, 97, 115, 109, 1, 0, 0, 0, 1, 5, 1, 96, 0, 1, 123, 3, 2, 1, 0, 10, 43, 1, 41, 0, 253, 12,
  0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 253, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
  0, 0, 0, 0, 253, 146, 2, 11,
]);
const relaxedSimd = (() => {
  try { return WebAssembly.validate(RELAXED_SIMD_PROBE); } catch { return false; }
})();

let engine = null;
if (self.crossOriginIsolated && relaxedSimd) {
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
