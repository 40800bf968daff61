// kv_f16.wgsl: KV-cache element type when the device has `shader-f16`: f16, as llama.cpp's
// default cache. Half the cache memory and half the bytes attention reads per position. A value
// is rounded once, when stored; every product and sum stays f32.
enable f16;
alias kv_t = f16;

