//! Every GPU kernel's WGSL, included from `shaders/` at compile time, and the pipeline cache.
//!
//! A kernel's source is a fixed list of parts joined in order: for kernels that touch the KV
//! cache, its element type (`kv_f32.wgsl`, baseline; `kv_f16.wgsl`, `shader-f16`); the
//! `common.wgsl` declarations; `quant.wgsl` (GGUF block decoders) for kernels that read weights;
//! one of the two reduction helpers (`reduce_wg.wgsl`, baseline; `reduce_sg.wgsl`, subgroups)
//! for kernels that reduce; `attn_io.wgsl` (shared Params and bindings) for the attention
//! kernels; then the kernel file. Variants differ only by that choice of parts
//! and by pipeline-overridable constants (`DTYPE`, `TILE_N`, `TPR`) or entry points (the pair
//! kernels' `glu` and `qkv`); no shader text is generated.
//!
//! Pipelines, bind group layouts and pipeline layouts are created once and kept under a
//! [`PipelineKey`].

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::quant::GgmlDType;

use super::context::GpuContext;

/// `shaders/common.wgsl`: type ids and small helpers.
pub const COMMON: &str = include_str!("../../../../shaders/common.wgsl");
/// `shaders/quant.wgsl`: GGUF block decoders over the kernel's `wword(buffer, word)`.
pub const QUANT: &str = include_str!("../../../../shaders/quant.wgsl");
/// `shaders/kv_f32.wgsl`: the KV cache holds f32 (baseline).
pub const KV_F32: &str = include_str!("../../../../shaders/kv_f32.wgsl");
/// `shaders/kv_f16.wgsl`: the KV cache holds f16 (`shader-f16`).
pub const KV_F16: &str = include_str!("../../../../shaders/kv_f16.wgsl");
/// `shaders/reduce_wg.wgsl`: workgroup reductions through workgroup memory.
pub const REDUCE_WG: &str = include_str!("../../../../shaders/reduce_wg.wgsl");
/// `shaders/reduce_sg.wgsl`: workgroup reductions with subgroup operations.
pub const REDUCE_SG: &str = include_str!("../../../../shaders/reduce_sg.wgsl");
/// `shaders/attn_io.wgsl`: Params and bindings of the attention kernels.
pub const ATTN_IO: &str = include_str!("../../../../shaders/attn_io.wgsl");
/// Kernel files.
pub const MATMUL: &str = include_str!("../../../../shaders/matmul.wgsl");
pub const MATMUL_PAIR: &str = include_str!("../../../../shaders/matmul_pair.wgsl");
pub const GET_ROWS: &str = include_str!("../../../../shaders/get_rows.wgsl");
pub const RMS_NORM: &str = include_str!("../../../../shaders/rms_norm.wgsl");
pub const ROPE: &str = include_str!("../../../../shaders/rope.wgsl");
pub const ATTENTION: &str = include_str!("../../../../shaders/attention.wgsl");
pub const ATTENTION_DECODE: &str = include_str!("../../../../shaders/attention_decode.wgsl");
pub const GLU: &str = include_str!("../../../../shaders/glu.wgsl");
pub const ADD: &str = include_str!("../../../../shaders/add.wgsl");
pub const SAMPLE: &str = include_str!("../../../../shaders/sample.wgsl");
pub const SAMPLE_TOPK: &str = include_str!("../../../../shaders/sample_topk.wgsl");

/// Browsers' WGSL front ends want the extension enabled; naga (native) accepts subgroup
/// builtins without it and rejects the directive.
#[cfg(target_arch = "wasm32")]
const ENABLE_SUBGROUPS: &str = "enable subgroups;\n";
#[cfg(not(target_arch = "wasm32"))]
const ENABLE_SUBGROUPS: &str = "";

/// Weight types the GPU kernels decode (matmul and embedding lookup): `load_piece` in
/// `shaders/quant.wgsl` has a case for each.
pub const GPU_WEIGHT_TYPES: [GgmlDType; 13] = [
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

/// Whether `op` has a GPU kernel for weights of `dtype`.
pub fn supports(op: Op, dtype: GgmlDType) -> bool {
    match op {
        Op::MatVec | Op::MatMul | Op::GetRows | Op::PairGlu | Op::PairQkv | Op::PairQkvNorm => {
            GPU_WEIGHT_TYPES.contains(&dtype)
        }
        _ => dtype == GgmlDType::F32,
    }
}

/// A kernel family. Ops sharing a bind group layout share one entry of [`Op::bindings`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// Quantized matrix × one vector (decode): matmul.wgsl with TILE_N = 1. The matmul kernels
    /// reduce with their own segmented sum (TPR invocations per row), not the shared helpers.
    MatVec,
    /// Quantized matrix × n vectors (prefill): matmul.wgsl with TILE_N = 8.
    MatMul,
    /// Gate and up products with the GLU in their epilogue: matmul_pair.wgsl, entry point `glu`;
    /// both weights of the key's type (`override DTYPE`); decode and prefill (the token tile is
    /// a parameter).
    PairGlu,
    /// Q, K, V products with RoPE and the KV-cache store in their epilogue: matmul_pair.wgsl,
    /// entry point `qkv`; all three weights of the key's type.
    PairQkv,
    /// [`Op::PairQkv`] with per-head Q and K RMSNorms before RoPE (Qwen3, Gemma 3): entry point
    /// `qkv_norm`, one workgroup per Q or K head (the norm needs the whole head), then the V
    /// pairs as `qkv`.
    PairQkvNorm,
    /// Embedding lookup from a quantized table.
    GetRows,
    RmsNorm,
    /// RoPE of Q and K fused with the store of K and V into the KV cache.
    Rope,
    /// Causal GQA attention over the GPU KV cache, prefill: one workgroup per (token, head).
    Attention,
    /// Decode attention, split along the cache: one workgroup per (head, cache chunk).
    AttnDecode,
    /// Merges the chunks of [`Op::AttnDecode`] (when there is more than one).
    AttnCombine,
    /// Gated linear unit in place (SiLU or GELU-tanh, a parameter).
    Glu,
    Add,
    /// Argmax / temperature, top-k, top-p sampling of one logits row in one workgroup: the
    /// settings [`Op::SampleGather`] does not take (top-k off or above its limit).
    Sample,
    /// Greedy or top-k (≤ 64) sampling over many workgroups, first dispatch: each workgroup's
    /// best candidates of its slice of the vocabulary (sample_topk.wgsl `gather`).
    SampleGather,
    /// Second dispatch: the best candidates of all, then top-p, min-p, temperature and the draw
    /// in descending order as the host sampler (sample_topk.wgsl `pick`).
    SamplePick,
}

/// Which reduction helper a kernel is built with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Variant {
    /// Workgroup-memory reductions: every WebGPU device.
    Base,
    /// Subgroup reductions: devices with `SUBGROUP`.
    Subgroup,
}

/// Element type of the KV cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KvType {
    /// 4 bytes per value: every WebGPU device.
    F32,
    /// 2 bytes per value: devices with `SHADER_F16`.
    F16,
}

impl KvType {
    /// Bytes per cached value.
    pub fn bytes(self) -> usize {
        match self {
            KvType::F32 => 4,
            KvType::F16 => 2,
        }
    }
}

/// Cache key of one compute pipeline. `dtype` is the weight type for the weight kernels and
/// `F32` for the others; `variant` is `Base` for kernels that do not reduce and `kv` is `F32`
/// for kernels that do not touch the KV cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PipelineKey {
    pub op: Op,
    pub dtype: GgmlDType,
    /// The pair kernels' second and third weight types (`DTYPE1`, `DTYPE2`: up; K and V);
    /// `[dtype; 2]` for every other op.
    pub dtype12: [GgmlDType; 2],
    pub variant: Variant,
    pub kv: KvType,
}

/// Size in bytes of the uniform parameter block every kernel binds at binding 0 (each kernel's
/// `Params` struct fits in it).
pub const PARAMS_BYTES: u64 = 128;

impl Op {
    /// Every op.
    pub const ALL: [Op; 16] = [
        Op::MatVec,
        Op::MatMul,
        Op::PairGlu,
        Op::PairQkv,
        Op::PairQkvNorm,
        Op::GetRows,
        Op::RmsNorm,
        Op::Rope,
        Op::Attention,
        Op::AttnDecode,
        Op::AttnCombine,
        Op::Glu,
        Op::Add,
        Op::Sample,
        Op::SampleGather,
        Op::SamplePick,
    ];

    fn kernel(self) -> &'static str {
        match self {
            Op::MatVec | Op::MatMul => MATMUL,
            Op::PairGlu | Op::PairQkv | Op::PairQkvNorm => MATMUL_PAIR,
            Op::GetRows => GET_ROWS,
            Op::RmsNorm => RMS_NORM,
            Op::Rope => ROPE,
            Op::Attention => ATTENTION,
            Op::AttnDecode | Op::AttnCombine => ATTENTION_DECODE,
            Op::Glu => GLU,
            Op::Add => ADD,
            Op::Sample => SAMPLE,
            Op::SampleGather | Op::SamplePick => SAMPLE_TOPK,
        }
    }

    /// Entry point of the kernel in its file.
    pub fn entry(self) -> &'static str {
        match self {
            Op::AttnDecode => "split",
            Op::AttnCombine => "combine",
            Op::PairGlu => "glu",
            Op::PairQkv => "qkv",
            Op::PairQkvNorm => "qkv_norm",
            Op::SampleGather => "gather",
            Op::SamplePick => "pick",
            _ => "main",
        }
    }

    /// Ops built from the same source share one shader module, keyed by the first.
    fn module_op(self) -> Op {
        match self {
            Op::AttnCombine => Op::AttnDecode,
            Op::PairQkv | Op::PairQkvNorm => Op::PairGlu,
            Op::SamplePick => Op::SampleGather,
            o => o,
        }
    }

    /// Whether the kernel's source declares the KV cache (and so has an f16-cache variant).
    pub fn uses_kv(self) -> bool {
        matches!(
            self,
            Op::Rope
                | Op::Attention
                | Op::AttnDecode
                | Op::AttnCombine
                | Op::PairGlu
                | Op::PairQkv
                | Op::PairQkvNorm
        )
    }

    /// Whether the kernel reads quantized weights: its pipelines are specialised to one weight
    /// type (the key's `dtype`, `override DTYPE`).
    fn reads_weights(self) -> bool {
        matches!(
            self,
            Op::MatVec | Op::MatMul | Op::GetRows | Op::PairGlu | Op::PairQkv | Op::PairQkvNorm
        )
    }

    /// Whether the kernel uses the workgroup reductions (and so has a subgroup variant).
    pub fn reduces(self) -> bool {
        matches!(
            self,
            Op::RmsNorm | Op::Attention | Op::AttnDecode | Op::AttnCombine | Op::Sample
        )
    }

    /// Storage bindings after the uniform at binding 0, in order: `true` = read-write.
    pub fn bindings(self) -> &'static [bool] {
        match self {
            // wq, x, y, bias, norm weight
            Op::MatVec | Op::MatMul => &[false, false, true, false, false],
            // w0, w1, w2, x, vecs (norm weight | biases | RoPE factors), y, k_cache, v_cache
            Op::PairGlu | Op::PairQkv | Op::PairQkvNorm => {
                &[false, false, false, false, false, true, true, true]
            }
            // wq, tokens, out
            Op::GetRows => &[false, false, true],
            // x, w, out
            Op::RmsNorm => &[false, false, true],
            // q_raw, q, k_raw, v_raw, k_cache, v_cache, freq
            Op::Rope => &[false, true, false, false, true, true, false],
            // q, k_cache, v_cache, scores (decode: chunk partials), out
            Op::Attention | Op::AttnDecode | Op::AttnCombine => &[false, false, false, true, true],
            // a (rw), b
            Op::Glu | Op::Add => &[true, false],
            // logits, out
            // logits (gather: logits; pick: candidates), out (gather: candidates; pick: id)
            Op::Sample | Op::SampleGather | Op::SamplePick => &[false, true],
        }
    }

    /// The ops sharing one bind group layout are keyed by their first member.
    fn layout_op(self) -> Op {
        match self {
            Op::MatMul => Op::MatVec,
            Op::PairQkv | Op::PairQkvNorm => Op::PairGlu,
            Op::Add => Op::Glu,
            Op::AttnDecode | Op::AttnCombine => Op::Attention,
            Op::SampleGather | Op::SamplePick => Op::Sample,
            o => o,
        }
    }
}

/// The WGSL of `op` built with `variant` and cache type `kv`: the fixed list of parts, joined.
pub fn source(op: Op, variant: Variant, kv: KvType) -> String {
    let mut parts: Vec<&'static str> = Vec::with_capacity(7);
    let sg = variant == Variant::Subgroup && op.reduces();
    if sg {
        parts.push(ENABLE_SUBGROUPS);
    }
    if op.uses_kv() {
        parts.push(match kv {
            KvType::F32 => KV_F32,
            KvType::F16 => KV_F16,
        });
    }
    parts.push(COMMON);
    if op.reads_weights() {
        parts.push(QUANT);
    }
    if op.reduces() {
        parts.push(if sg { REDUCE_SG } else { REDUCE_WG });
    }
    if matches!(op, Op::Attention | Op::AttnDecode | Op::AttnCombine) {
        parts.push(ATTN_IO);
    }
    parts.push(op.kernel());
    parts.concat()
}

/// Pipeline-overridable constants of a key; `tpr`: matmul invocations per row.
fn overrides(key: PipelineKey, tpr: u32) -> Vec<(&'static str, f64)> {
    let mut c = Vec::new();
    if key.op.reads_weights() {
        c.push(("DTYPE", key.dtype.ggml_id() as f64));
    }
    if matches!(key.op, Op::PairGlu | Op::PairQkv | Op::PairQkvNorm) {
        c.push(("DTYPE1", key.dtype12[0].ggml_id() as f64));
    }
    if matches!(key.op, Op::PairQkv | Op::PairQkvNorm) {
        c.push(("DTYPE2", key.dtype12[1].ggml_id() as f64));
    }
    match key.op {
        Op::MatVec => c.extend([("TILE_N", 1.0), ("TPR", tpr as f64)]),
        Op::MatMul => c.extend([("TILE_N", 8.0), ("TPR", tpr as f64)]),
        Op::PairGlu | Op::PairQkv | Op::PairQkvNorm => c.push(("TPR", tpr as f64)),
        _ => {}
    }
    c
}

/// Built pipelines and layouts, created on first request (at model load) and kept.
pub struct PipelineCache {
    variant: Variant,
    kv: KvType,
    /// Matmul invocations per weight row (fixed per device).
    tpr: u32,
    layouts: HashMap<Op, (wgpu::BindGroupLayout, wgpu::PipelineLayout)>,
    modules: HashMap<(Op, Variant, KvType), wgpu::ShaderModule>,
    pipelines: HashMap<PipelineKey, wgpu::ComputePipeline>,
}

impl PipelineCache {
    /// Empty cache; kernels that reduce use subgroups and the KV cache holds f16 when the device
    /// has those features.
    pub fn new(ctx: &GpuContext) -> Self {
        Self {
            variant: if ctx.info.subgroups {
                Variant::Subgroup
            } else {
                Variant::Base
            },
            kv: if ctx.info.f16 {
                KvType::F16
            } else {
                KvType::F32
            },
            tpr: ctx.info.matmul_threads_per_row,
            layouts: HashMap::new(),
            modules: HashMap::new(),
            pipelines: HashMap::new(),
        }
    }

    /// The key used for `op` on weights of `dtype` (`F32` for non-weight ops).
    pub fn key(&self, op: Op, dtype: GgmlDType) -> PipelineKey {
        self.key_pair(op, [dtype; 3])
    }

    /// The key of `op` whose weights are of `dtypes` (w0, w1, w2; the pair kernels read more
    /// than one weight, every other op only the first).
    pub fn key_pair(&self, op: Op, [dtype, d1, d2]: [GgmlDType; 3]) -> PipelineKey {
        PipelineKey {
            op,
            dtype,
            dtype12: [d1, d2],
            variant: if op.reduces() {
                self.variant
            } else {
                Variant::Base
            },
            kv: if op.uses_kv() { self.kv } else { KvType::F32 },
        }
    }

    /// Element type of the KV cache on this device.
    pub fn kv_type(&self) -> KvType {
        self.kv
    }

    /// Number of pipelines built so far.
    pub fn len(&self) -> usize {
        self.pipelines.len()
    }

    /// Whether none is built.
    pub fn is_empty(&self) -> bool {
        self.pipelines.is_empty()
    }

    /// The bind group layout of `op` (created on first use).
    pub fn layout(&mut self, ctx: &GpuContext, op: Op) -> &wgpu::BindGroupLayout {
        &self.layout_pair(ctx, op).0
    }

    fn layout_pair(
        &mut self,
        ctx: &GpuContext,
        op: Op,
    ) -> &(wgpu::BindGroupLayout, wgpu::PipelineLayout) {
        let lop = op.layout_op();
        self.layouts.entry(lop).or_insert_with(|| {
            let mut entries = vec![wgpu::BindGroupLayoutEntry {
                binding: 0,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Uniform,
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            }];
            for (i, &rw) in lop.bindings().iter().enumerate() {
                entries.push(wgpu::BindGroupLayoutEntry {
                    binding: i as u32 + 1,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Storage { read_only: !rw },
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                    count: None,
                });
            }
            let bgl = ctx
                .device
                .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                    label: Some("slm bind group layout"),
                    entries: &entries,
                });
            let pl = ctx
                .device
                .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                    label: Some("slm pipeline layout"),
                    bind_group_layouts: &[Some(&bgl)],
                    immediate_size: 0,
                });
            (bgl, pl)
        })
    }

    /// Build (once) the pipeline of `key`. Errors: [`Error::OpDType`] for an unsupported dtype,
    /// [`Error::Gpu`] when the shader fails to compile.
    pub fn prepare(&mut self, ctx: &GpuContext, key: PipelineKey) -> Result<()> {
        if self.pipelines.contains_key(&key) {
            return Ok(());
        }
        if let Some(&dtype) = [key.dtype, key.dtype12[0], key.dtype12[1]]
            .iter()
            .find(|&&d| !supports(key.op, d))
        {
            return Err(Error::OpDType {
                op: "gpu pipeline",
                dtype,
            });
        }
        ctx.check()?;
        let mkey = (key.op.module_op(), key.variant, key.kv);
        self.modules.entry(mkey).or_insert_with(|| {
            ctx.device
                .create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some("slm kernel"),
                    source: wgpu::ShaderSource::Wgsl(source(key.op, key.variant, key.kv).into()),
                })
        });
        let consts = overrides(key, self.tpr);
        self.layout_pair(ctx, key.op);
        let (_, pl) = &self.layouts[&key.op.layout_op()];
        let module = &self.modules[&mkey];
        let pipeline = ctx
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some("slm pipeline"),
                layout: Some(pl),
                module,
                entry_point: Some(key.op.entry()),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: &consts,
                    zero_initialize_workgroup_memory: true,
                },
                cache: None,
            });
        ctx.check().map_err(|e| Error::Gpu {
            op: "compile kernel",
            what: format!("{key:?}: {e}"),
        })?;
        self.pipelines.insert(key, pipeline);
        Ok(())
    }

    /// The pipeline of `key`, which [`PipelineCache::prepare`] must have built.
    pub fn get(&self, key: PipelineKey) -> Result<&wgpu::ComputePipeline> {
        self.pipelines.get(&key).ok_or_else(|| Error::Gpu {
            op: "pipeline cache",
            what: format!("{key:?} was not prepared"),
        })
    }
}
