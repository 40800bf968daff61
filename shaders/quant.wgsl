// quant.wgsl: GGUF block decoders over a weight buffer `wq: array<u32>` declared by the kernel.
//
// Weights stay in their GGUF block layout, byte-packed; WGSL storage is u32-addressed, so every
// field is read by byte offset from u32 words (little endian). All f16 fields and all block
// starts are at even byte offsets, so a u16 never straddles two words; 4-byte reads at an even
// offset combine at most two words (`wu32`).
//
// Layouts (bytes), as llama.cpp ggml-common.h (element j of a block; l = j % 32):
//   F16, BF16 (2 per element): BF16 is the upper half of an f32
//   Q4_0 (18): d:f16 | qs[16]                 x = d * (nibble - 8); low nibbles: elements 0..15
//   Q4_1 (20): d:f16 m:f16 | qs[16]           x = d * nibble + m
//   Q5_0 (22): d:f16 | qh:u32 | qs[16]        x = d * ((nibble | bit_j(qh) << 4) - 16)
//   Q5_1 (24): d:f16 m:f16 | qh:u32 | qs[16]  x = d * (nibble | bit_j(qh) << 4) + m
//   Q8_0 (34): d:f16 | qs:i8[32]              x = d * q
//   Q2_K (84): scales[16] (sc | m << 4, per 16) | qs[64] (2-bit) | d:f16 dmin:f16
//              x = d * sc * q - dmin * m; q = bits 2k.. of qs[32 n + l], j = 128 n + 32 k + l
//   Q3_K (110): hmask[32] | qs[64] (2-bit, as Q2_K) | scales[12] (6-bit, per 16) | d:f16
//              x = d * (sc - 32) * ((q | bit_(4n+k)(hmask[l]) << 2) - 4)
//   Q4_K (144): d:f16 dmin:f16 | scales[12] (6-bit sc/m per 32) | qs[128]
//              x = d * sc * nibble - dmin * m; nibble s % 2 of qs[32 (s / 2) + l], s = j / 32
//   Q5_K (176): d:f16 dmin:f16 | scales[12] (as Q4_K) | qh[32] | qs[128] (as Q4_K)
//              x = d * sc * (nibble | bit_s(qh[l]) << 4) - dmin * m
//   Q6_K (210): ql[128] | qh[64] | scales:i8[16] | d:f16
// Kernels work on "pieces" of 16 consecutive elements of a row: every type above has one scale
// per piece, so a piece decodes with one scale lookup. The quants of a piece are 16 consecutive
// bytes (plus 16 high-bit bytes for Q3_K, Q5_K, Q6_K), read as 4 words; a bit field of all 16
// bytes is unpacked at once with a shift and a per-byte mask (`bits16`), then the bytes are
// scaled one by one (`byte16`).

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

// Bits `sh ..` of each of 16 bytes, kept by the per-byte `mask` (e.g. 0x0f0f0f0f: a nibble).
// Bits shifted in from the next byte land above the mask and are cleared.
fn bits16(q: vec4<u32>, sh: u32, mask: u32) -> vec4<u32> {
    return (q >> vec4<u32>(sh)) & vec4<u32>(mask);
}

// Byte `i` (0..15) of 4 words.
fn byte16(q: vec4<u32>, i: u32) -> u32 {
    return byte_of(q[i / 4u], i % 4u);
}

// Elements per block of DTYPE (16 for the float types: a "block" is one piece).
fn block_elems() -> u32 {
    switch DTYPE {
        case T_Q2_K, T_Q3_K, T_Q4_K, T_Q5_K, T_Q6_K: { return 256u; }
        case T_F32, T_F16, T_BF16: { return 16u; }
        default: { return 32u; }
    }
}

fn block_bytes() -> u32 {
    switch DTYPE {
        case T_F32: { return 64u; }
        case T_F16, T_BF16: { return 32u; }
        case T_Q4_0: { return 18u; }
        case T_Q4_1: { return 20u; }
        case T_Q5_0: { return 22u; }
        case T_Q5_1: { return 24u; }
        case T_Q8_0: { return 34u; }
        case T_Q2_K: { return 84u; }
        case T_Q3_K: { return 110u; }
        case T_Q4_K: { return 144u; }
        case T_Q5_K: { return 176u; }
        default: { return 210u; } // T_Q6_K
    }
}

// Q4_K / Q5_K: 6-bit scale and min of sub-block `j` (0..7) of the block at `bo`.
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
        case T_F16, T_BF16: {
            for (var i = 0u; i < 16u; i++) {
                if (pc * 16u + i >= cols) { (*v)[i] = 0.0; continue; }
                let u = wu16(row_off + 2u * (pc * 16u + i));
                if (DTYPE == T_BF16) { (*v)[i] = bitcast<f32>(u << 16u); } else { (*v)[i] = unpack2x16float(u).x; }
            }
        }
        case T_Q4_0, T_Q4_1: {
            let d = wf16(bo);
            var m = -8.0 * d;
            var qo = bo + 2u;
            if (DTYPE == T_Q4_1) { m = wf16(bo + 2u); qo = bo + 4u; }
            let q = bits16(w16bytes(qo), h * 4u, 0x0f0f0f0fu);
            for (var i = 0u; i < 16u; i++) {
                (*v)[i] = d * f32(byte16(q, i)) + m;
            }
        }
        case T_Q5_0, T_Q5_1: {
            let d = wf16(bo);
            var m = -16.0 * d;
            var qo = bo + 2u;
            if (DTYPE == T_Q5_1) { m = wf16(bo + 2u); qo = bo + 4u; }
            // Bits 16 h .. 16 h + 15 of qh, one per byte, moved to bit 4.
            let hw = wu32(qo) >> (16u * h);
            let hb = vec4<u32>(hw, hw >> 4u, hw >> 8u, hw >> 12u);
            let hi = ((hb & vec4<u32>(1u)) | ((hb & vec4<u32>(2u)) << vec4<u32>(7u)) |
                ((hb & vec4<u32>(4u)) << vec4<u32>(14u)) | ((hb & vec4<u32>(8u)) << vec4<u32>(21u))) <<
                vec4<u32>(4u);
            let q = bits16(w16bytes(qo + 4u), h * 4u, 0x0f0f0f0fu) | hi;
            for (var i = 0u; i < 16u; i++) {
                (*v)[i] = d * f32(byte16(q, i)) + m;
            }
        }
        case T_Q8_0: {
            let d = wf16(bo);
            let q = w16bytes(bo + 2u + 16u * h);
            for (var i = 0u; i < 16u; i++) {
                (*v)[i] = d * i8_of(byte_of(q[i / 4u], i % 4u));
            }
        }
        case T_Q2_K: {
            let n = h / 8u;
            let k = (h % 8u) / 2u;
            let sc = wbyte(bo + h);
            let dm = unpack2x16float(wu32(bo + 80u));
            let d = dm.x * f32(sc & 0xfu);
            let m = dm.y * f32(sc >> 4u);
            let q = bits16(w16bytes(bo + 16u + 32u * n + 16u * (h % 2u)), 2u * k, 0x03030303u);
            for (var i = 0u; i < 16u; i++) {
                (*v)[i] = d * f32(byte16(q, i)) - m;
            }
        }
        case T_Q3_K: {
            let n = h / 8u;
            let k = (h % 8u) / 2u;
            let l0 = 16u * (h % 2u);
            // Scale h: low 4 bits in byte h % 8 (high nibble for h >= 8), high 2 bits in byte
            // 8 + h % 4 at bit 2 * (h / 4).
            let s = bo + 96u;
            let lo = (wbyte(s + h % 8u) >> (4u * (h / 8u))) & 0xfu;
            let hs = (wbyte(s + 8u + h % 4u) >> (2u * (h / 4u))) & 3u;
            let d = wf16(bo + 108u) * (f32(lo | (hs << 4u)) - 32.0);
            let q = bits16(w16bytes(bo + 32u + 32u * n + l0), 2u * k, 0x03030303u) |
                (bits16(w16bytes(bo + l0), 4u * n + k, 0x01010101u) << vec4<u32>(2u));
            for (var i = 0u; i < 16u; i++) {
                (*v)[i] = d * (f32(byte16(q, i)) - 4.0);
            }
        }
        case T_Q4_K, T_Q5_K: {
            let j = h / 2u; // sub-block of 32
            let dm = unpack2x16float(wu32(bo));
            let sm = q4k_scale_min(bo, j);
            let d = dm.x * sm.x;
            let m = dm.y * sm.y;
            var qo = bo + 16u;
            var hi = vec4<u32>(0u);
            if (DTYPE == T_Q5_K) {
                qo = bo + 48u;
                hi = bits16(w16bytes(bo + 16u + 16u * (h % 2u)), j, 0x01010101u) << vec4<u32>(4u);
            }
            let q = bits16(w16bytes(qo + 32u * (j / 2u) + 16u * (h % 2u)), (j % 2u) * 4u, 0x0f0f0f0fu) | hi;
            for (var i = 0u; i < 16u; i++) {
                (*v)[i] = d * f32(byte16(q, i)) - m;
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
            let q = bits16(ql, (k >> 1u) * 4u, 0x0f0f0f0fu) |
                (bits16(qh, 2u * k, 0x03030303u) << vec4<u32>(4u));
            for (var i = 0u; i < 16u; i++) {
                (*v)[i] = d * (f32(byte16(q, i)) - 32.0);
            }
        }
    }
}
