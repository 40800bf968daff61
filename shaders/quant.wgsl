// quant.wgsl: GGUF block decoders over a weight buffer `wq: array<u32>` declared by the kernel.
//
// Weights stay in their GGUF block layout, byte-packed; WGSL storage is u32-addressed, so every
// field is read by byte offset from u32 words (little endian). All f16 fields and all block
// starts are at even byte offsets, so a u16 never straddles two words; 4-byte reads at an even
// offset combine at most two words (`wu32`).
//
// Layouts (bytes), as llama.cpp ggml-common.h:
//   Q4_0 (18): d:f16 | qs[16]            x = d * (nibble - 8); low nibbles: elements 0..15
//   Q4_1 (20): d:f16 m:f16 | qs[16]      x = d * nibble + m
//   Q5_0 (22): d:f16 | qh:u32 | qs[16]   x = d * ((nibble | bit_j(qh) << 4) - 16)
//   Q8_0 (34): d:f16 | qs:i8[32]         x = d * q
//   Q4_K (144): d:f16 dmin:f16 | scales[12] (6-bit sc/m per 32) | qs[128]
//   Q6_K (210): ql[128] | qh[64] | scales:i8[16] | d:f16
// Kernels work on "pieces" of 16 consecutive elements of a row: every type above has one scale
// per piece, so a piece decodes with one scale lookup.

override DTYPE: u32 = T_Q4_0;

fn wbyte(off: u32) -> u32 {
    return (wq[off >> 2u] >> ((off & 3u) << 3u)) & 0xffu;
}

// u16 at an even byte offset.
fn wu16(off: u32) -> u32 {
    return (wq[off >> 2u] >> ((off & 2u) << 3u)) & 0xffffu;
}

fn wf16(off: u32) -> f32 {
    return unpack2x16float(wu16(off)).x;
}

// u32 at an even byte offset.
fn wu32(off: u32) -> u32 {
    let i = off >> 2u;
    if ((off & 2u) == 0u) {
        return wq[i];
    }
    return (wq[i] >> 16u) | (wq[i + 1u] << 16u);
}

// 16 bytes at an even byte offset, as 4 words.
fn w16bytes(off: u32) -> vec4<u32> {
    return vec4<u32>(wu32(off), wu32(off + 4u), wu32(off + 8u), wu32(off + 12u));
}

// Elements per block of DTYPE (16 for the float types: a "block" is one piece).
fn block_elems() -> u32 {
    switch DTYPE {
        case T_Q4_K, T_Q6_K: { return 256u; }
        case T_F32, T_F16: { return 16u; }
        default: { return 32u; }
    }
}

fn block_bytes() -> u32 {
    switch DTYPE {
        case T_F32: { return 64u; }
        case T_F16: { return 32u; }
        case T_Q4_0: { return 18u; }
        case T_Q4_1: { return 20u; }
        case T_Q5_0: { return 22u; }
        case T_Q8_0: { return 34u; }
        case T_Q4_K: { return 144u; }
        default: { return 210u; } // T_Q6_K
    }
}

// Q4_K: 6-bit scale and min of sub-block `j` (0..7) of the block at `bo`.
fn q4k_scale_min(bo: u32, j: u32) -> vec2<f32> {
    let s = bo + 4u;
    if (j < 4u) {
        return vec2<f32>(f32(wbyte(s + j) & 63u), f32(wbyte(s + j + 4u) & 63u));
    }
    let sc = (wbyte(s + j + 4u) & 0xfu) | ((wbyte(s + j - 4u) >> 6u) << 4u);
    let m = (wbyte(s + j + 4u) >> 4u) | ((wbyte(s + j) >> 6u) << 4u);
    return vec2<f32>(f32(sc), f32(m));
}

// Decode piece `pc` (elements 16*pc .. 16*pc+15) of the row whose first byte is `row_off`.
// `cols` bounds the float types (their rows need not be a multiple of 16); elements past it
// read as 0.
fn load_piece(row_off: u32, pc: u32, cols: u32, v: ptr<function, array<f32, 16>>) {
    let per_block = block_elems() / 16u;
    let bo = row_off + (pc / per_block) * block_bytes();
    let h = pc % per_block;
    switch DTYPE {
        case T_F32: {
            let base = row_off / 4u + pc * 16u;
            for (var i = 0u; i < 16u; i++) {
                if (pc * 16u + i < cols) { (*v)[i] = bitcast<f32>(wq[base + i]); } else { (*v)[i] = 0.0; }
            }
        }
        case T_F16: {
            for (var i = 0u; i < 16u; i++) {
                if (pc * 16u + i < cols) { (*v)[i] = wf16(row_off + 2u * (pc * 16u + i)); } else { (*v)[i] = 0.0; }
            }
        }
        case T_Q4_0, T_Q4_1: {
            let d = wf16(bo);
            var m = -8.0 * d;
            var qo = bo + 2u;
            if (DTYPE == T_Q4_1) { m = wf16(bo + 2u); qo = bo + 4u; }
            let q = w16bytes(qo);
            let sh = h * 4u;
            for (var i = 0u; i < 16u; i++) {
                let b = byte_of(q[i / 4u], i % 4u);
                (*v)[i] = d * f32((b >> sh) & 0xfu) + m;
            }
        }
        case T_Q5_0: {
            let d = wf16(bo);
            let qh = wu32(bo + 2u);
            let q = w16bytes(bo + 6u);
            let sh = h * 4u;
            for (var i = 0u; i < 16u; i++) {
                let b = byte_of(q[i / 4u], i % 4u);
                let hb = ((qh >> (16u * h + i)) & 1u) << 4u;
                (*v)[i] = d * (f32(((b >> sh) & 0xfu) | hb) - 16.0);
            }
        }
        case T_Q8_0: {
            let d = wf16(bo);
            let q = w16bytes(bo + 2u + 16u * h);
            for (var i = 0u; i < 16u; i++) {
                (*v)[i] = d * i8_of(byte_of(q[i / 4u], i % 4u));
            }
        }
        case T_Q4_K: {
            let j = h / 2u; // sub-block of 32
            let dm = unpack2x16float(wu32(bo));
            let sm = q4k_scale_min(bo, j);
            let d = dm.x * sm.x;
            let m = dm.y * sm.y;
            let q = w16bytes(bo + 16u + 32u * (j / 2u) + 16u * (h % 2u));
            let sh = (j % 2u) * 4u;
            for (var i = 0u; i < 16u; i++) {
                let b = byte_of(q[i / 4u], i % 4u);
                (*v)[i] = d * f32((b >> sh) & 0xfu) - m;
            }
        }
        default: { // T_Q6_K
            let e0 = 16u * h;
            let n = e0 / 128u;
            let r = e0 % 128u;
            let k = r / 32u;
            let l0 = r % 32u;
            let ql = w16bytes(bo + 64u * n + 32u * (k & 1u) + l0);
            let qh = w16bytes(bo + 128u + 32u * n + l0);
            let sc = i8_of(wbyte(bo + 192u + 8u * n + l0 / 16u + 2u * k));
            let d = wf16(bo + 208u) * sc;
            let shl = (k >> 1u) * 4u;
            let shh = 2u * k;
            for (var i = 0u; i < 16u; i++) {
                let lo = (byte_of(ql[i / 4u], i % 4u) >> shl) & 0xfu;
                let hi = (byte_of(qh[i / 4u], i % 4u) >> shh) & 3u;
                (*v)[i] = d * (f32(lo | (hi << 4u)) - 32.0);
            }
        }
    }
}
