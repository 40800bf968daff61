//! Float reference: plain-loop dequantization of every weight type (following the
//! `dequantize_row_*` functions of llama.cpp `ggml/src/ggml-quants.c`) and the dequantize-then-dot
//! oracle every fast path is judged against.

use half::{bf16, f16};

use super::blocks::*;
use super::{GgmlDType, QK, QK_K};
use crate::error::{Error, Result};

fn shape_err(detail: String) -> Error {
    Error::Shape {
        op: "dequantize_row",
        detail,
    }
}

/// View `src` as blocks of `B` covering exactly `n_out` elements of `dtype`.
fn blocks_for<B: bytemuck::Pod>(dtype: GgmlDType, src: &[u8], n_out: usize) -> Result<&[B]> {
    let need = dtype.row_bytes(n_out).ok_or_else(|| {
        shape_err(format!(
            "{n_out} elements is not a multiple of the {dtype} block size {}",
            dtype.block_size()
        ))
    })?;
    if src.len() != need {
        return Err(shape_err(format!(
            "{n_out} {dtype} elements need {need} bytes, got {}",
            src.len()
        )));
    }
    as_blocks(src).ok_or_else(|| {
        shape_err(format!(
            "{dtype} row at address {:p} is not {}-byte aligned",
            src.as_ptr(),
            std::mem::align_of::<B>()
        ))
    })
}

/// Dequantize one row; see [`super::dequantize_row`].
pub(crate) fn dequantize_row(dtype: GgmlDType, src: &[u8], dst: &mut [f32]) -> Result<()> {
    let n = dst.len();
    match dtype {
        GgmlDType::F32 => {
            check_len(dtype, src, n)?;
            for (o, b) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        GgmlDType::F16 => {
            check_len(dtype, src, n)?;
            for (o, b) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *o = f16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        GgmlDType::BF16 => {
            check_len(dtype, src, n)?;
            for (o, b) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *o = bf16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        GgmlDType::Q4_0 => deq_q4_0(blocks_for(dtype, src, n)?, dst),
        GgmlDType::Q4_1 => deq_q4_1(blocks_for(dtype, src, n)?, dst),
        GgmlDType::Q5_0 => deq_q5_0(blocks_for(dtype, src, n)?, dst),
        GgmlDType::Q5_1 => deq_q5_1(blocks_for(dtype, src, n)?, dst),
        GgmlDType::Q8_0 => deq_q8_0(blocks_for(dtype, src, n)?, dst),
        GgmlDType::Q2K => deq_q2k(blocks_for(dtype, src, n)?, dst),
        GgmlDType::Q3K => deq_q3k(blocks_for(dtype, src, n)?, dst),
        GgmlDType::Q4K => deq_q4k(blocks_for(dtype, src, n)?, dst),
        GgmlDType::Q5K => deq_q5k(blocks_for(dtype, src, n)?, dst),
        GgmlDType::Q6K => deq_q6k(blocks_for(dtype, src, n)?, dst),
        GgmlDType::Q8_1 | GgmlDType::Q8K => {
            return Err(Error::OpDType {
                op: "dequantize_row",
                dtype,
            })
        }
    }
    Ok(())
}

fn check_len(dtype: GgmlDType, src: &[u8], n: usize) -> Result<()> {
    match dtype.row_bytes(n) {
        Some(need) if need == src.len() => Ok(()),
        _ => Err(shape_err(format!(
            "{n} {dtype} elements need {} bytes, got {}",
            n.saturating_mul(dtype.type_size()),
            src.len()
        ))),
    }
}

fn deq_q4_0(blocks: &[BlockQ4_0], dst: &mut [f32]) {
    for (b, y) in blocks.iter().zip(dst.chunks_exact_mut(QK)) {
        let d = b.d.to_f32();
        for j in 0..QK / 2 {
            let lo = (b.qs[j] & 0x0F) as i32 - 8;
            let hi = (b.qs[j] >> 4) as i32 - 8;
            y[j] = lo as f32 * d;
            y[j + QK / 2] = hi as f32 * d;
        }
    }
}

fn deq_q4_1(blocks: &[BlockQ4_1], dst: &mut [f32]) {
    for (b, y) in blocks.iter().zip(dst.chunks_exact_mut(QK)) {
        let d = b.d.to_f32();
        let m = b.m.to_f32();
        for j in 0..QK / 2 {
            y[j] = (b.qs[j] & 0x0F) as f32 * d + m;
            y[j + QK / 2] = (b.qs[j] >> 4) as f32 * d + m;
        }
    }
}

/// The 5-bit value of element `j` (0..32) of a Q5 block: nibble plus bit `j` of `qh`.
#[inline]
fn q5_value(qs: &[u8; QK / 2], qh: u32, j: usize) -> u8 {
    let nib = if j < QK / 2 {
        qs[j] & 0x0F
    } else {
        qs[j - QK / 2] >> 4
    };
    nib | ((((qh >> j) & 1) as u8) << 4)
}

fn deq_q5_0(blocks: &[BlockQ5_0], dst: &mut [f32]) {
    for (b, y) in blocks.iter().zip(dst.chunks_exact_mut(QK)) {
        let d = b.d.to_f32();
        let qh = u32::from_le_bytes(b.qh);
        for (j, o) in y.iter_mut().enumerate() {
            *o = (q5_value(&b.qs, qh, j) as i32 - 16) as f32 * d;
        }
    }
}

fn deq_q5_1(blocks: &[BlockQ5_1], dst: &mut [f32]) {
    for (b, y) in blocks.iter().zip(dst.chunks_exact_mut(QK)) {
        let d = b.d.to_f32();
        let m = b.m.to_f32();
        let qh = u32::from_le_bytes(b.qh);
        for (j, o) in y.iter_mut().enumerate() {
            *o = q5_value(&b.qs, qh, j) as f32 * d + m;
        }
    }
}

fn deq_q8_0(blocks: &[BlockQ8_0], dst: &mut [f32]) {
    for (b, y) in blocks.iter().zip(dst.chunks_exact_mut(QK)) {
        let d = b.d.to_f32();
        for (o, &q) in y.iter_mut().zip(&b.qs) {
            *o = q as f32 * d;
        }
    }
}

fn deq_q2k(blocks: &[BlockQ2K], dst: &mut [f32]) {
    for (b, y) in blocks.iter().zip(dst.chunks_exact_mut(QK_K)) {
        let d = b.d.to_f32();
        let dmin = b.dmin.to_f32();
        // Element e = 128 n + 32 j + l: bits 2j.. of qs[32 n + l], group e / 16.
        for (e, o) in y.iter_mut().enumerate() {
            let (n, j, l) = (e / 128, (e % 128) / 32, e % 32);
            let sc = b.scales[e / 16];
            let dl = d * (sc & 0x0F) as f32;
            let ml = dmin * (sc >> 4) as f32;
            let q = (b.qs[32 * n + l] >> (2 * j)) & 3;
            *o = dl * q as f32 - ml;
        }
    }
}

fn deq_q3k(blocks: &[BlockQ3K], dst: &mut [f32]) {
    for (b, y) in blocks.iter().zip(dst.chunks_exact_mut(QK_K)) {
        let d = b.d.to_f32();
        let scales = unpack_q3k_scales(&b.scales);
        for (e, o) in y.iter_mut().enumerate() {
            let (n, j, l) = (e / 128, (e % 128) / 32, e % 32);
            let dl = d * scales[e / 16] as f32;
            let low = ((b.qs[32 * n + l] >> (2 * j)) & 3) as i32;
            let high_set = b.hmask[l] & (1 << (4 * n + j)) != 0;
            let q = low - if high_set { 0 } else { 4 };
            *o = dl * q as f32;
        }
    }
}

fn deq_q4k(blocks: &[BlockQ4K], dst: &mut [f32]) {
    for (b, y) in blocks.iter().zip(dst.chunks_exact_mut(QK_K)) {
        let d = b.d.to_f32();
        let dmin = b.dmin.to_f32();
        let (sc, mn) = unpack_k4_scales(&b.scales);
        // Sub-block s = 2i + h covers elements 32 s .. 32 s + 32: nibble h of qs[32 i + l].
        for (s, ys) in y.chunks_exact_mut(32).enumerate() {
            let d1 = d * sc[s] as f32;
            let m1 = dmin * mn[s] as f32;
            for (l, o) in ys.iter_mut().enumerate() {
                let q = (b.qs[32 * (s / 2) + l] >> (4 * (s % 2))) & 0x0F;
                *o = d1 * q as f32 - m1;
            }
        }
    }
}

fn deq_q5k(blocks: &[BlockQ5K], dst: &mut [f32]) {
    for (b, y) in blocks.iter().zip(dst.chunks_exact_mut(QK_K)) {
        let d = b.d.to_f32();
        let dmin = b.dmin.to_f32();
        let (sc, mn) = unpack_k4_scales(&b.scales);
        for (s, ys) in y.chunks_exact_mut(32).enumerate() {
            let d1 = d * sc[s] as f32;
            let m1 = dmin * mn[s] as f32;
            for (l, o) in ys.iter_mut().enumerate() {
                let low = (b.qs[32 * (s / 2) + l] >> (4 * (s % 2))) & 0x0F;
                let high = (b.qh[l] >> s) & 1;
                *o = d1 * (low | (high << 4)) as f32 - m1;
            }
        }
    }
}

fn deq_q6k(blocks: &[BlockQ6K], dst: &mut [f32]) {
    for (b, y) in blocks.iter().zip(dst.chunks_exact_mut(QK_K)) {
        let d = b.d.to_f32();
        for (e, o) in y.iter_mut().enumerate() {
            let (n, k, l) = (e / 128, (e % 128) / 32, e % 32);
            let low = (b.ql[64 * n + 32 * (k % 2) + l] >> (4 * (k / 2))) & 0x0F;
            let high = (b.qh[32 * n + l] >> (2 * k)) & 3;
            let q = (low | (high << 4)) as i32 - 32;
            *o = d * b.scales[e / 16] as f32 * q as f32;
        }
    }
}

/// Dequantize then dot; see [`super::vec_dot_ref`].
pub(crate) fn vec_dot_ref(dtype: GgmlDType, row: &[u8], x: &[f32]) -> f32 {
    let mut w = vec![0f32; x.len()];
    if let Err(e) = dequantize_row(dtype, row, &mut w) {
        panic!("vec_dot_ref: {e}");
    }
    w.iter()
        .zip(x)
        .map(|(&a, &b)| a as f64 * b as f64)
        .sum::<f64>() as f32
}
