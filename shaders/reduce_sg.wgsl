// reduce_sg.wgsl: workgroup-wide sum/max with subgroup operations (used when the device has
// SUBGROUP). Same interface as reduce_wg.wgsl. It assumes nothing about how invocations map to
// subgroups: the first active lane of each subgroup (found with
// subgroupBroadcastFirst) stores that subgroup's result at its own
// index, every other slot holds the identity, and invocation 0 folds the WG slots.

var<workgroup> red: array<f32, WG>;

fn reduce_sum(v: f32, lid: u32) -> f32 {
    let s = subgroupAdd(v);
    red[lid] = select(0.0, s, subgroupBroadcastFirst(lid) == lid);
    workgroupBarrier();
    if (lid == 0u) {
        var t = 0.0;
        for (var i = 0u; i < WG; i++) { t += red[i]; }
        red[0] = t;
    }
    workgroupBarrier();
    let r = red[0];
    workgroupBarrier();
    return r;
}

fn reduce_max(v: f32, lid: u32) -> f32 {
    let s = subgroupMax(v);
    red[lid] = select(NEG_INF, s, subgroupBroadcastFirst(lid) == lid);
    workgroupBarrier();
    if (lid == 0u) {
        var t = NEG_INF;
        for (var i = 0u; i < WG; i++) { t = max(t, red[i]); }
        red[0] = t;
    }
    workgroupBarrier();
    let r = red[0];
    workgroupBarrier();
    return r;
}
