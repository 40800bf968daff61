// The engine's Web Worker: the same wasm module as the page; main() sees no window and
// returns, then worker_main() listens for load/generate messages.
//
// Three builds of that module, the first that loads runs:
// 1. web-ui-mt.js: atomics + shared memory + relaxed SIMD, the engine worker alone (built without
//    the `ui` feature); the CPU engine's thread pool runs on Web Workers (pool-worker.js). Needs
//    SharedArrayBuffer, i.e. a cross-origin isolated page, and relaxed SIMD.
// 2. web-ui-relaxed.js: single-threaded, relaxed SIMD, the engine worker alone: a host page
//    without COOP/COEP embedding the widget.
// 3. web-ui.js: single-threaded, plain simd128, with the UI (what the page runs): a browser
//    without relaxed SIMD (relaxed SIMD's 8-bit dot product is 1.5-1.7x faster here).
// `?simd=plain` (passed on from the page's URL) skips 1 and 2, for tests.
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

const plain = new URL(self.location.href).searchParams.get('simd') === 'plain';

const tryBuild = async (name) => {
  try {
    const m = await import(`./${name}.js`);
    await m.default({ module_or_path: `./${name}_bg.wasm` });
    return m;
  } catch (e) {
    console.warn(`engine build ${name} unavailable, trying the next:`, e);
    return null;
  }
};
let engine = null;
if (relaxedSimd && !plain && self.crossOriginIsolated) engine = await tryBuild('web-ui-mt');
if (relaxedSimd && !plain && !engine) engine = await tryBuild('web-ui-relaxed');
if (!engine) {
  engine = await import('./web-ui.js');
  await engine.default({ module_or_path: './web-ui_bg.wasm' });
}
engine.worker_main(threads);
