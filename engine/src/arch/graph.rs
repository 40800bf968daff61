//! The backend-neutral interface an architecture's forward pass is written against.
//!
//! A family's `build` ([`super::Family`]) loads its tensors through [`Weights`] and records its
//! forward pass as a [`Graph`]: a short list of [`Op`]s over named activation buffers ([`Act`]).
//! The CPU backend executes the list op by op on every forward call; the GPU backend turns each
//! op into one kernel dispatch with bind groups made once at load, so a decode step is still
//! one command buffer and one submission. Backends know these ops, never a family.
//!
//! Semantics, for a batch of `n` tokens at positions `pos .. pos + n`:
//! every activation is row-major (n, width) with the width given by [`Act::width`].
//! [`Graph::layers`] runs on all `n` rows; [`Graph::head`] runs on the rows whose logits are
//! wanted (`m` of them), where reading [`Act::X`] starts at the first such row and every other
//! buffer starts at row 0.

use crate::model::ModelConfig;

/// An activation buffer of the batch: (n, [`Act::width`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Act {
    /// Residual stream, (n, n_embd).
    X,
    /// Normalised input of a sub-block, (n, n_embd).
    Xn,
    /// Queries, (n, q_dim).
    Q,
    /// Keys, (n, kv_dim).
    K,
    /// Values, (n, kv_dim).
    V,
    /// Attention output, (n, q_dim).
    Att,
    /// A sub-block's projection output, (n, n_embd).
    Proj,
    /// Feed-forward gate (then the GLU output), (n, n_ff).
    Gate,
    /// Feed-forward up projection, (n, n_ff).
    Up,
    /// Output logits, (m, n_vocab).
    Logits,
}

impl Act {
    /// Every activation, in a fixed order (index = `self as usize`).
    pub const ALL: [Act; 10] = [
        Act::X,
        Act::Xn,
        Act::Q,
        Act::K,
        Act::V,
        Act::Att,
        Act::Proj,
        Act::Gate,
        Act::Up,
        Act::Logits,
    ];

    /// Row width of this buffer for `cfg`.
    pub fn width(self, cfg: &ModelConfig) -> usize {
        match self {
            Act::X | Act::Xn | Act::Proj => cfg.n_embd,
            Act::Q | Act::Att => cfg.q_dim(),
            Act::K | Act::V => cfg.kv_dim(),
            Act::Gate | Act::Up => cfg.n_ff,
            Act::Logits => cfg.n_vocab,
        }
    }
}

/// A weight matrix a backend loaded: (rows, cols) = (out, in), in its GGUF block layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Mat(pub usize);

/// An f32 vector a backend loaded (norm weight, bias, RoPE frequency factors).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Vector(pub usize);

/// The activation of a gated linear unit: `gate = act(gate) ⊙ up`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Glu {
    /// SwiGLU (Llama, Qwen, Phi, Granite, SmolLM).
    Silu,
    /// GeGLU with GELU's tanh approximation (Gemma).
    GeluTanh,
}

/// What a [`Op::Linear`] does with its product `p = W·x (+ b)`: `out = softcap(scale · p)`,
/// added to `out` when `accumulate` (a fused residual add).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Epilogue {
    pub scale: f32,
    /// `c · tanh(v / c)`; 0 = none.
    pub softcap: f32,
    pub accumulate: bool,
}

impl Epilogue {
    /// `out = W·x (+ b)`.
    pub const STORE: Epilogue = Epilogue {
        scale: 1.0,
        softcap: 0.0,
        accumulate: false,
    };
    /// `out += W·x (+ b)`.
    pub const ADD: Epilogue = Epilogue {
        scale: 1.0,
        softcap: 0.0,
        accumulate: true,
    };
    /// `out += scale · (W·x (+ b))`.
    pub fn add_scaled(scale: f32) -> Self {
        Epilogue { scale, ..Self::ADD }
    }
}

/// One step of a forward pass.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Op {
    /// `X[t] = scale · table[token t]`; table: (n_vocab, n_embd).
    Embed { table: Mat, scale: f32 },
    /// `out = RMSNorm(x) ⊙ w` per row (rows as wide as `x`), or `out += …` when `add`.
    Norm {
        x: Act,
        w: Vector,
        out: Act,
        add: bool,
    },
    /// In place: `x = RMSNorm(x) ⊙ w` over every head of `x` (w: (head_dim)); Qwen3/Gemma 3
    /// q/k norms.
    HeadNorm { x: Act, w: Vector },
    /// `out (+)= epilogue(W·x + b)`; W: (out width, x width), b: (out width).
    Linear {
        w: Mat,
        bias: Option<Vector>,
        x: Act,
        out: Act,
        epi: Epilogue,
    },
    /// RoPE of [`Act::Q`] and [`Act::K`] in place with layer `layer`'s
    /// [`crate::model::config::LayerSpec::rope`] (nothing rotates when it is `None`) and
    /// frequency factors `freqs` ((n_rot / 2)), then K and V stored in the layer's KV cache at
    /// positions `pos ..`.
    RopeStore { layer: usize, freqs: Option<Vector> },
    /// `Att = softmax(softcap(scale · Q·Kᵀ)) · V` over layer `layer`'s cache, causal, within the
    /// layer's window, GQA (values from [`crate::model::config::LayerSpec`]).
    Attend { layer: usize },
    /// `Gate = act(Gate) ⊙ Up`.
    Glu(Glu),
}

impl Op {
    /// Activations this op reads.
    pub fn reads(&self) -> Vec<Act> {
        match *self {
            Op::Embed { .. } => vec![],
            Op::Norm { x, out, add, .. } => {
                if add {
                    vec![x, out]
                } else {
                    vec![x]
                }
            }
            Op::HeadNorm { x, .. } => vec![x],
            Op::Linear { x, out, epi, .. } => {
                if epi.accumulate {
                    vec![x, out]
                } else {
                    vec![x]
                }
            }
            Op::RopeStore { .. } => vec![Act::Q, Act::K, Act::V],
            Op::Attend { .. } => vec![Act::Q],
            Op::Glu(_) => vec![Act::Gate, Act::Up],
        }
    }

    /// Activations this op writes.
    pub fn writes(&self) -> Vec<Act> {
        match *self {
            Op::Embed { .. } => vec![Act::X],
            Op::Norm { out, .. } => vec![out],
            Op::HeadNorm { x, .. } => vec![x],
            Op::Linear { out, .. } => vec![out],
            Op::RopeStore { .. } => vec![Act::Q],
            Op::Attend { .. } => vec![Act::Att],
            Op::Glu(_) => vec![Act::Gate],
        }
    }
}

/// A forward pass: [`Graph::layers`] on every token of a batch, then [`Graph::head`] on the
/// rows whose logits are wanted (it must end with a [`Op::Linear`] into [`Act::Logits`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Graph {
    pub layers: Vec<Op>,
    pub head: Vec<Op>,
    in_head: bool,
}

impl Graph {
    /// An empty graph.
    pub fn new() -> Self {
        Self::default()
    }

    fn push(&mut self, op: Op) {
        if self.in_head {
            self.head.push(op);
        } else {
            self.layers.push(op);
        }
    }

    /// Ops from here on belong to the head (final norm, output projection).
    pub fn begin_head(&mut self) {
        self.in_head = true;
    }

    /// Bytes of weights one decode step reads: every matrix of a product whole, one row of an
    /// embedding table. `size(m)` gives (matrix bytes, row bytes).
    pub fn weight_bytes_per_token(&self, size: impl Fn(Mat) -> (u64, u64)) -> u64 {
        self.layers
            .iter()
            .chain(&self.head)
            .map(|op| match *op {
                Op::Embed { table, .. } => size(table).1,
                Op::Linear { w, .. } => size(w).0,
                _ => 0,
            })
            .sum()
    }

    /// [`Op::Embed`].
    pub fn embed(&mut self, table: Mat, scale: f32) {
        self.push(Op::Embed { table, scale });
    }
    /// [`Op::Norm`]: `out = RMSNorm(x) ⊙ w`.
    pub fn norm(&mut self, x: Act, w: Vector, out: Act) {
        self.push(Op::Norm {
            x,
            w,
            out,
            add: false,
        });
    }
    /// [`Op::Norm`] added to `out`: `out += RMSNorm(x) ⊙ w` (Gemma's post-norms).
    pub fn norm_add(&mut self, x: Act, w: Vector, out: Act) {
        self.push(Op::Norm {
            x,
            w,
            out,
            add: true,
        });
    }
    /// [`Op::HeadNorm`].
    pub fn head_norm(&mut self, x: Act, w: Vector) {
        self.push(Op::HeadNorm { x, w });
    }
    /// [`Op::Linear`].
    pub fn linear(&mut self, w: Mat, bias: Option<Vector>, x: Act, out: Act, epi: Epilogue) {
        self.push(Op::Linear {
            w,
            bias,
            x,
            out,
            epi,
        });
    }
    /// [`Op::RopeStore`].
    pub fn rope_store(&mut self, layer: usize, freqs: Option<Vector>) {
        self.push(Op::RopeStore { layer, freqs });
    }
    /// [`Op::Attend`].
    pub fn attend(&mut self, layer: usize) {
        self.push(Op::Attend { layer });
    }
    /// [`Op::Glu`].
    pub fn glu(&mut self, act: Glu) {
        self.push(Op::Glu(act));
    }
}

/// Where a backend keeps what [`Weights`] reads: a matrix in its GGUF block layout (the backend
/// keeps it in CPU memory or uploads it and drops the bytes) or a small f32 vector.
pub trait WeightStore {
    /// Keep matrix `name`: (rows, cols) of `dtype` blocks. Errors: the backend's (e.g. a type
    /// without a GPU kernel, GPU out of memory).
    fn matrix(
        &mut self,
        name: &str,
        dtype: crate::quant::GgmlDType,
        rows: usize,
        cols: usize,
        bytes: crate::tensor::TensorBytes,
    ) -> crate::Result<Mat>;
    /// Keep an f32 vector.
    fn vector(&mut self, name: &str, v: Vec<f32>) -> crate::Result<Vector>;
}

pub use super::weights::Weights;
