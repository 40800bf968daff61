// kv_f32.wgsl: KV-cache element type of the baseline (no optional feature): f32.
alias kv_t = f32;

