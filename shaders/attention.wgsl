// attention.wgsl: causal scaled dot-product attention with grouped-query heads over a KV cache
// that lives on the GPU. Query t (at position pos0 + t) of head h attends to cache rows
// first_visible(pos0 + t) ..= pos0 + t of KV head h / (n_head / n_head_kv), scores soft-capped. One workgroup per (token, head): scores go
// to a scratch row (exact softmax in three passes), then each invocation sums its output dims.
// This is the prefill path; a single-token decode uses attention_decode.wgsl, which splits the
// cache across workgroups. Params and bindings: attn_io.wgsl (scratch holds the scores).

const WG: u32 = 64u;

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let id = linear_wg(wid, nwg);
    if (id >= p.n_tok * p.n_head) { return; }
    let t = id / p.n_head;
    let h = id % p.n_head;
    let kvh = h / (p.n_head / p.n_head_kv);
    let hd = p.head_dim;
    let n_kv = p.pos0 + t + 1u;
    let j0 = first_visible(p.pos0 + t);
    let sb = id * p.n_ctx;
    for (var i = lid; i < hd; i += WG) { qs[i] = q[t * p.q_stride + h * hd + i] * p.scale; }
    workgroupBarrier();

    var mx = NEG_INF;
    for (var j = j0 + lid; j < n_kv; j += WG) {
        let kb = j * p.kv_dim + kvh * hd;
        var s = 0.0;
        for (var i = 0u; i < hd; i++) { s += qs[i] * f32(k_cache[kb + i]); }
        scratch[sb + j] = capped(s);
        mx = max(mx, scratch[sb + j]);
    }
    mx = reduce_max(mx, lid);
    var sum = 0.0;
    for (var j = j0 + lid; j < n_kv; j += WG) {
        let e = exp(scratch[sb + j] - mx);
        scratch[sb + j] = e;
        sum += e;
    }
    sum = reduce_sum(sum, lid);
    storageBarrier();
    let inv = 1.0 / sum;
    for (var i = lid; i < hd; i += WG) {
        var acc = 0.0;
        let vb = kvh * hd + i;
        for (var j = j0; j < n_kv; j++) { acc += scratch[sb + j] * f32(v_cache[j * p.kv_dim + vb]); }
        out[t * p.n_head * hd + h * hd + i] = acc * inv;
    }
}
