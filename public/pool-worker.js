// One thread of the CPU engine's pool in the multi-threaded build (see worker.js): instantiates
// the module on the engine worker's shared memory, runs the pool's loop until the pool is
// dropped (the model unloaded), then ends.
import init, { pool_thread_entry } from './web-ui-mt.js';

self.onmessage = async (e) => {
  const [module, memory, ptr] = e.data;
  const wasm = await init({ module_or_path: module, memory });
  pool_thread_entry(ptr);
  // Free this thread's stack and thread-local storage in the shared memory.
  if (wasm.__wbindgen_thread_destroy) wasm.__wbindgen_thread_destroy();
  self.close();
};
