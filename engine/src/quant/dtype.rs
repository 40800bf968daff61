//! `GgmlDType`: the single source of truth for GGML tensor type ids, block sizes and type sizes.
//! Values follow `ggml.h` / `ggml.c` (`type_traits`) in llama.cpp.

/// A GGML tensor element type supported by this engine.
///
/// A row of `n` elements of type `t` occupies `n / t.block_size() * t.type_size()` bytes and `n`
/// must be a multiple of `t.block_size()`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GgmlDType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    /// Activation-only: 32 int8 + f16 scale + f16 sum (ggml `block_q8_1`).
    Q8_1,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    /// Activation-only: 256 int8 + f32 scale + 16 i16 group sums (ggml `block_q8_K`).
    Q8K,
}

/// Elements per block of the K-quants (`QK_K` in ggml).
pub const QK_K: usize = 256;
/// Elements per block of the legacy quants (`QK4_0`, `QK8_0`, ... in ggml).
pub const QK: usize = 32;

impl GgmlDType {
    /// Every weight type a GGUF may carry that this engine reads.
    pub const WEIGHT_TYPES: [GgmlDType; 13] = [
        GgmlDType::F32,
        GgmlDType::F16,
        GgmlDType::BF16,
        GgmlDType::Q4_0,
        GgmlDType::Q4_1,
        GgmlDType::Q5_0,
        GgmlDType::Q5_1,
        GgmlDType::Q8_0,
        GgmlDType::Q2K,
        GgmlDType::Q3K,
        GgmlDType::Q4K,
        GgmlDType::Q5K,
        GgmlDType::Q6K,
    ];

    /// The GGML type id (`enum ggml_type`) as stored in GGUF tensor infos.
    pub const fn ggml_id(self) -> u32 {
        match self {
            GgmlDType::F32 => 0,
            GgmlDType::F16 => 1,
            GgmlDType::Q4_0 => 2,
            GgmlDType::Q4_1 => 3,
            GgmlDType::Q5_0 => 6,
            GgmlDType::Q5_1 => 7,
            GgmlDType::Q8_0 => 8,
            GgmlDType::Q8_1 => 9,
            GgmlDType::Q2K => 10,
            GgmlDType::Q3K => 11,
            GgmlDType::Q4K => 12,
            GgmlDType::Q5K => 13,
            GgmlDType::Q6K => 14,
            GgmlDType::Q8K => 15,
            GgmlDType::BF16 => 30,
        }
    }

    /// The weight type for a GGML type id, or `None` when the id is unknown or not a weight type
    /// this engine implements (see [`ggml_type_name`] for a printable name).
    pub fn from_ggml_id(id: u32) -> Option<Self> {
        Self::WEIGHT_TYPES.into_iter().find(|t| t.ggml_id() == id)
    }

    /// Elements per block.
    pub const fn block_size(self) -> usize {
        match self {
            GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => 1,
            GgmlDType::Q4_0
            | GgmlDType::Q4_1
            | GgmlDType::Q5_0
            | GgmlDType::Q5_1
            | GgmlDType::Q8_0
            | GgmlDType::Q8_1 => QK,
            GgmlDType::Q2K
            | GgmlDType::Q3K
            | GgmlDType::Q4K
            | GgmlDType::Q5K
            | GgmlDType::Q6K
            | GgmlDType::Q8K => QK_K,
        }
    }

    /// Bytes per block.
    pub const fn type_size(self) -> usize {
        match self {
            GgmlDType::F32 => 4,
            GgmlDType::F16 | GgmlDType::BF16 => 2,
            GgmlDType::Q4_0 => 2 + QK / 2,
            GgmlDType::Q4_1 => 2 * 2 + QK / 2,
            GgmlDType::Q5_0 => 2 + 4 + QK / 2,
            GgmlDType::Q5_1 => 2 * 2 + 4 + QK / 2,
            GgmlDType::Q8_0 => 2 + QK,
            GgmlDType::Q8_1 => 2 * 2 + QK,
            GgmlDType::Q2K => QK_K / 16 + QK_K / 4 + 2 * 2,
            GgmlDType::Q3K => QK_K / 8 + QK_K / 4 + 12 + 2,
            GgmlDType::Q4K => 2 * 2 + 12 + QK_K / 2,
            GgmlDType::Q5K => 2 * 2 + 12 + QK_K / 8 + QK_K / 2,
            GgmlDType::Q6K => QK_K / 2 + QK_K / 4 + QK_K / 16 + 2,
            GgmlDType::Q8K => 4 + QK_K + QK_K / 16 * 2,
        }
    }

    /// Bytes in a row of `n_elements`, or `None` when `n_elements` is not a multiple of the
    /// block size or the size overflows.
    pub fn row_bytes(self, n_elements: usize) -> Option<usize> {
        if n_elements % self.block_size() != 0 {
            return None;
        }
        (n_elements / self.block_size()).checked_mul(self.type_size())
    }

    /// Whether this is a block-quantized type (not F32/F16/BF16).
    pub const fn is_quantized(self) -> bool {
        self.block_size() > 1
    }

    /// The GGML name, e.g. `"q4_K"`.
    pub fn name(self) -> &'static str {
        ggml_type_name(self.ggml_id())
    }
}

impl std::fmt::Display for GgmlDType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Printable GGML name of any type id (including ones this engine does not implement), for
/// error messages.
pub fn ggml_type_name(id: u32) -> &'static str {
    match id {
        0 => "f32",
        1 => "f16",
        2 => "q4_0",
        3 => "q4_1",
        6 => "q5_0",
        7 => "q5_1",
        8 => "q8_0",
        9 => "q8_1",
        10 => "q2_K",
        11 => "q3_K",
        12 => "q4_K",
        13 => "q5_K",
        14 => "q6_K",
        15 => "q8_K",
        16 => "iq2_xxs",
        17 => "iq2_xs",
        18 => "iq3_xxs",
        19 => "iq1_s",
        20 => "iq4_nl",
        21 => "iq3_s",
        22 => "iq2_s",
        23 => "iq4_xs",
        24 => "i8",
        25 => "i16",
        26 => "i32",
        27 => "i64",
        28 => "f64",
        29 => "iq1_m",
        30 => "bf16",
        34 => "tq1_0",
        35 => "tq2_0",
        39 => "mxfp4",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_sizes_match_ggml() {
        // (type, block elements, block bytes) as listed in ggml.c type_traits.
        let expected = [
            (GgmlDType::F32, 1, 4),
            (GgmlDType::F16, 1, 2),
            (GgmlDType::BF16, 1, 2),
            (GgmlDType::Q4_0, 32, 18),
            (GgmlDType::Q4_1, 32, 20),
            (GgmlDType::Q5_0, 32, 22),
            (GgmlDType::Q5_1, 32, 24),
            (GgmlDType::Q8_0, 32, 34),
            (GgmlDType::Q2K, 256, 84),
            (GgmlDType::Q3K, 256, 110),
            (GgmlDType::Q4K, 256, 144),
            (GgmlDType::Q5K, 256, 176),
            (GgmlDType::Q6K, 256, 210),
        ];
        for (t, bs, ts) in expected {
            assert_eq!((t.block_size(), t.type_size()), (bs, ts), "{t}");
            assert_eq!(GgmlDType::from_ggml_id(t.ggml_id()), Some(t));
        }
        assert_eq!(GgmlDType::Q8K.type_size(), 292);
        assert_eq!(GgmlDType::Q8_1.type_size(), 36);
        assert_eq!(GgmlDType::from_ggml_id(20), None);
        assert_eq!(GgmlDType::Q4K.row_bytes(512), Some(288));
        assert_eq!(GgmlDType::Q4K.row_bytes(500), None);
    }
}
