// The engine's Web Worker: the same wasm module as the page; main() sees no window and
// returns, then worker_main() listens for load/generate messages.
import init, { worker_main } from './web-ui.js';

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

await init({ module_or_path: './web-ui_bg.wasm' });
worker_main();
