// attention_decode.wgsl: causal GQA attention of one new token (decode) over the GPU KV cache,
// split along the cache ("flash decoding", Dao et al. 2023): a decode step has only n_head
// queries, too few workgroups to fill a GPU if each walked the whole cache. `split` gives each
// workgroup one (head, chunk of `chunk` cache positions, from the first visible one): it computes that chunk's scores in
// workgroup memory, their max m and sum l of exp(s - m), and o = Σ exp(s - m) v. With one chunk
// it writes o / l straight to `out`; otherwise it stores (o, m, l) and `combine` (one workgroup
// per head) rescales the chunks to their common max: out = Σ e^(m_c - M) o_c / Σ e^(m_c - M) l_c.
// Params and bindings: attn_io.wgsl (n_tok = 1, query position pos0; scratch holds the chunks'
// partials (o, m, l), head_dim + 2 floats per (chunk, head)).

const WG: u32 = 64u;
// Largest `chunk` (the host's choice, ≤ this).
const MAX_CHUNK: u32 = 256u;

var<workgroup> sc: array<f32, MAX_CHUNK>;

@compute @workgroup_size(WG)
fn split(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let id = linear_wg(wid, nwg);
    if (id >= p.n_head * p.n_chunks) { return; }
    let h = id % p.n_head;
    let c = id / p.n_head;
    let kvh = h / (p.n_head / p.n_head_kv);
    let hd = p.head_dim;
    let j0 = first_visible(p.pos0) + c * p.chunk;
    let j1 = min(j0 + p.chunk, p.pos0 + 1u);
    for (var i = lid; i < hd; i += WG) { qs[i] = q[h * hd + i] * p.scale; }
    workgroupBarrier();

    var mx = NEG_INF;
    for (var j = j0 + lid; j < j1; j += WG) {
        let kb = j * p.kv_dim + kvh * hd;
        var s = 0.0;
        for (var i = 0u; i < hd; i++) { s += qs[i] * f32(k_cache[kb + i]); }
        sc[j - j0] = capped(s);
        mx = max(mx, sc[j - j0]);
    }
    mx = reduce_max(mx, lid);
    var sum = 0.0;
    for (var j = j0 + lid; j < j1; j += WG) {
        let e = exp(sc[j - j0] - mx);
        sc[j - j0] = e;
        sum += e;
    }
    sum = reduce_sum(sum, lid);
    workgroupBarrier();
    let pb = id * (hd + 2u);
    for (var i = lid; i < hd; i += WG) {
        var acc = 0.0;
        let vb = kvh * hd + i;
        for (var j = j0; j < j1; j++) { acc += sc[j - j0] * f32(v_cache[j * p.kv_dim + vb]); }
        if (p.n_chunks == 1u) {
            out[h * hd + i] = acc / sum;
        } else {
            scratch[pb + i] = acc;
        }
    }
    if (p.n_chunks > 1u && lid == 0u) {
        scratch[pb + hd] = mx;
        scratch[pb + hd + 1u] = sum;
    }
}

@compute @workgroup_size(WG)
fn combine(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let h = linear_wg(wid, nwg);
    if (h >= p.n_head) { return; }
    let hd = p.head_dim;
    let st = hd + 2u;
    var m = NEG_INF;
    for (var c = 0u; c < p.n_chunks; c++) { m = max(m, scratch[(c * p.n_head + h) * st + hd]); }
    var l = 0.0;
    for (var c = 0u; c < p.n_chunks; c++) {
        let b = (c * p.n_head + h) * st;
        l += exp(scratch[b + hd] - m) * scratch[b + hd + 1u];
    }
    for (var i = lid; i < hd; i += WG) {
        var acc = 0.0;
        for (var c = 0u; c < p.n_chunks; c++) {
            let b = (c * p.n_head + h) * st;
            acc += exp(scratch[b + hd] - m) * scratch[b + i];
        }
        out[h * hd + i] = acc / l;
    }
}
