// attn_io.wgsl: Params and bindings shared by attention.wgsl (prefill) and attention_decode.wgsl
// (decode split and merge), which share one bind group layout and one bind group per layer.
// The cache holds kv_t (kv_f32.wgsl or kv_f16.wgsl); all arithmetic is f32.
// q: (n_tok, q_stride); k_cache, v_cache: (n_ctx, kv_dim); out: (n_tok, n_head * head_dim);
// scratch: prefill scores (n_tok * n_head, n_ctx), or the decode chunks' partials
// (n_chunks * n_head, head_dim + 2).

const MAX_HEAD_DIM: u32 = 256u;

struct Params {
    n_head: u32,
    n_head_kv: u32,
    head_dim: u32,
    n_tok: u32,
    pos0: u32,
    kv_dim: u32,
    q_stride: u32,
    n_ctx: u32,
    scale: f32,
    // Decode only: cache positions per workgroup, number of chunks.
    chunk: u32,
    n_chunks: u32,
    // Scores go through softcap * tanh(s / softcap) when softcap > 0 (Gemma 2).
    softcap: f32,
    // A query at position p sees positions p + 1 - window ..= p; 0: every earlier position.
    window: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

// First cache position a query at position `pos` sees.
fn first_visible(pos: u32) -> u32 {
    if (p.window > 0u && pos + 1u > p.window) { return pos + 1u - p.window; }
    return 0u;
}

// A scaled score after the soft cap.
fn capped(s: f32) -> f32 {
    if (p.softcap > 0.0) { return p.softcap * tanh(clamp(s / p.softcap, -15.0, 15.0)); }
    return s;
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k_cache: array<kv_t>;
@group(0) @binding(3) var<storage, read> v_cache: array<kv_t>;
@group(0) @binding(4) var<storage, read_write> scratch: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

// The query of the current (token, head), pre-scaled.
var<workgroup> qs: array<f32, MAX_HEAD_DIM>;

