//! GpuModel against the CPU model on SmolLM2-135M (Q4_1): prefill logits of every position,
//! decode logits, GPU greedy sampling, and the one-submission decode stream.
//!
//! Two references: an f32 forward pass written here from the CPU model's weights and the scalar
//! reference ops (dequantized weights, f32 activations: the GPU's arithmetic), which the GPU must
//! match tightly; and the CPU model itself, which quantizes activations to Q8 for its dot products
//! (as llama.cpp does), so the GPU matches it only to a looser normalized error.
//! No adapter is a failure, unless `SLM_SKIP_GPU_TESTS=1`.

mod common;
use common::*;

use engine::backend::cpu::ops;
use engine::backend::gpu::{Gpu, GpuModel, GpuOptions, GpuSampling};
use engine::gguf::{FileSource, GgufFile};
use engine::model::llama::{CpuLlama, LlamaWeights};
use engine::model::{ForwardPass, Logits, ModelConfig};

/// GPU vs the f32 reference: root-mean-square logit difference over the reference's standard
/// deviation.
const REF_NRMSE: f32 = 5e-4;
/// GPU vs the CPU model, same measure. Dominated by the CPU's Q8 activations: the CPU model is
/// itself 0.03-0.08 away from the f32 reference on this prompt (printed by the test).
const CPU_NRMSE: f32 = 0.15;

fn skip() -> bool {
    std::env::var("SLM_SKIP_GPU_TESTS").is_ok_and(|v| v == "1")
}

fn nrmse(gpu: &[f32], cpu: &[f32]) -> f32 {
    let n = cpu.len() as f32;
    let mean = cpu.iter().sum::<f32>() / n;
    let var = cpu.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / n;
    let mse = gpu
        .iter()
        .zip(cpu)
        .map(|(a, b)| (a - b).powi(2))
        .sum::<f32>()
        / n;
    (mse / var).sqrt()
}

/// f32 forward pass of `tokens` from position 0 with dequantized weights, straight from the
/// scalar reference ops (no KV-cache reuse, no activation quantization). Returns every
/// position's logits: (tokens.len(), n_vocab).
fn reference_forward(c: &ModelConfig, w: &LlamaWeights, tokens: &[u32]) -> Vec<f32> {
    let (n_embd, q_dim, kv_dim, n) = (c.n_embd, c.q_dim(), c.kv_dim(), tokens.len());
    let mut k_cache = vec![0f32; n * kv_dim];
    let mut v_cache = vec![0f32; n * kv_dim];
    let mut x = vec![0f32; n * n_embd];
    let mut row = vec![0f32; n_embd];
    for (t, &tok) in tokens.iter().enumerate() {
        let e = &w.token_embd;
        engine::quant::dequantize_row(e.dtype, e.row(tok as usize), &mut row).unwrap();
        x[t * n_embd..(t + 1) * n_embd].copy_from_slice(&row);
    }
    let add_bias = |v: &mut [f32], b: &Option<Vec<f32>>| {
        if let Some(b) = b {
            v.iter_mut().zip(b).for_each(|(a, b)| *a += b);
        }
    };
    let (mut xn, mut q, mut att, mut o) = (
        vec![0f32; n_embd],
        vec![0f32; q_dim],
        vec![0f32; q_dim],
        vec![0f32; n_embd],
    );
    let (mut gate, mut up, mut scores) = (vec![0f32; c.n_ff], vec![0f32; c.n_ff], vec![0f32; n]);
    for l in &w.layers {
        for t in 0..n {
            let xt = &mut x[t * n_embd..(t + 1) * n_embd];
            ops::rms_norm(&mut xn, xt, &l.attn_norm, c.rms_eps);
            ops::matvec_ref(&l.wq, &xn, &mut q).unwrap();
            add_bias(&mut q, &l.bq);
            let kt = &mut k_cache[t * kv_dim..(t + 1) * kv_dim];
            ops::matvec_ref(&l.wk, &xn, kt).unwrap();
            add_bias(kt, &l.bk);
            let rope = |v: &mut [f32], heads: usize| {
                ops::rope(
                    v,
                    heads,
                    c.head_dim,
                    c.n_rot,
                    t,
                    c.rope_base,
                    c.rope_pos_scale,
                    c.rope_layout,
                    w.rope_freqs.as_deref(),
                );
            };
            rope(kt, c.n_head_kv);
            rope(&mut q, c.n_head);
            let vt = &mut v_cache[t * kv_dim..(t + 1) * kv_dim];
            ops::matvec_ref(&l.wv, &xn, vt).unwrap();
            add_bias(vt, &l.bv);
            ops::attention(
                &mut att,
                &q,
                &k_cache,
                &v_cache,
                t + 1,
                c.n_head,
                c.n_head_kv,
                c.head_dim,
                &mut scores,
            );
            ops::matvec_ref(&l.wo, &att, &mut o).unwrap();
            xt.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
            ops::rms_norm(&mut xn, xt, &l.ffn_norm, c.rms_eps);
            ops::matvec_ref(&l.w_gate, &xn, &mut gate).unwrap();
            ops::matvec_ref(&l.w_up, &xn, &mut up).unwrap();
            ops::swiglu(&mut gate, &up);
            ops::matvec_ref(&l.w_down, &gate, &mut o).unwrap();
            xt.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
        }
    }
    let mut logits = vec![0f32; n * c.n_vocab];
    for t in 0..n {
        ops::rms_norm(
            &mut xn,
            &x[t * n_embd..(t + 1) * n_embd],
            &w.output_norm,
            c.rms_eps,
        );
        ops::matvec_ref(
            w.output(),
            &xn,
            &mut logits[t * c.n_vocab..(t + 1) * c.n_vocab],
        )
        .unwrap();
    }
    logits
}

fn argmax(x: &[f32]) -> usize {
    engine::backend::cpu::ops::argmax(x) as usize
}

fn run(opts: GpuOptions, label: &str) {
    let path = model_path(SMOLLM2);
    let src = FileSource::open(&path).unwrap();
    let file = GgufFile::parse(&src).unwrap();
    let n_ctx = 128;
    let mut cpu = CpuLlama::load(&file, &src, n_ctx, 2).unwrap();
    let gpu = Gpu::new(&opts)
        .unwrap_or_else(|e| panic!("no GPU ({e}); set SLM_SKIP_GPU_TESTS=1 to skip GPU tests"));
    let mut gm = GpuModel::load(gpu, &file, &src, n_ctx).unwrap();
    let n_vocab = gm.config().n_vocab;
    eprintln!(
        "{label}: {:?}; {} dispatches per token, {} MiB of weights",
        gm.gpu_info().name,
        gm.dispatches_per_token(),
        gm.weight_bytes() >> 20
    );

    // Prefill: every position's logits, against the f32 reference and the CPU model.
    let prompt = [1u32, 504, 3458, 314, 260, 1345, 28, 9734, 42, 2];
    let reference = reference_forward(gm.config(), cpu.weights(), &prompt);
    let want = cpu.forward(&prompt, 0, Logits::All).unwrap().to_vec();
    let got = gm.forward(&prompt, 0, Logits::All).unwrap().to_vec();
    assert_eq!(got.len(), prompt.len() * n_vocab);
    for t in 0..prompt.len() {
        let rows = |v: &[f32]| v[t * n_vocab..(t + 1) * n_vocab].to_vec();
        let (g, r, w) = (rows(&got), rows(&reference), rows(&want));
        let (e_ref, e_cpu, e_cpu_ref) = (nrmse(&g, &r), nrmse(&g, &w), nrmse(&w, &r));
        eprintln!(
            "{label}: prefill position {t}: gpu-ref {e_ref:.6}, gpu-cpu {e_cpu:.5} (cpu-ref {e_cpu_ref:.5})"
        );
        assert!(
            e_ref <= REF_NRMSE,
            "{label}: position {t}: GPU vs f32 reference nrmse {e_ref}"
        );
        assert!(
            e_cpu <= CPU_NRMSE,
            "{label}: position {t}: GPU vs CPU model nrmse {e_cpu}"
        );
        assert_eq!(argmax(&g), argmax(&r), "{label}: position {t}: top token");
    }

    // Decode with the KV cache: against the reference over the extended sequence.
    let mut seq = prompt.to_vec();
    let mut tok = argmax(&reference[reference.len() - n_vocab..]) as u32;
    for step in 0..2 {
        let pos = seq.len();
        seq.push(tok);
        let reference = reference_forward(gm.config(), cpu.weights(), &seq);
        let r = &reference[reference.len() - n_vocab..];
        let w = cpu.forward(&[tok], pos, Logits::Last).unwrap().to_vec();
        let g = gm.forward(&[tok], pos, Logits::Last).unwrap().to_vec();
        let (e_ref, e_cpu) = (nrmse(&g, r), nrmse(&g, &w));
        eprintln!("{label}: decode {step}: gpu-ref {e_ref:.6}, gpu-cpu {e_cpu:.5}");
        assert!(
            e_ref <= REF_NRMSE,
            "{label}: decode step {step}: nrmse {e_ref}"
        );
        assert!(
            e_cpu <= CPU_NRMSE,
            "{label}: decode step {step}: nrmse {e_cpu}"
        );
        tok = argmax(r) as u32;
    }
    let pos = seq.len();
    let w = cpu.forward(&[tok], pos, Logits::Last).unwrap().to_vec();
    let g = gm.forward(&[tok], pos, Logits::Last).unwrap().to_vec();
    let greedy = argmax(&g) as u32;
    let _ = w;

    // GPU sampling in one submission: greedy equals the argmax of the same step's logits.
    let sampled = gm.decode_sample(tok, pos, &GpuSampling::greedy()).unwrap();
    assert_eq!(sampled, greedy, "{label}: GPU greedy token");
    assert_eq!(gm.last_dispatch_count(), gm.dispatches_per_token());
    let s = GpuSampling {
        temperature: 0.8,
        top_k: 40,
        top_p: 0.95,
        random: 0.3,
    };
    let drawn = gm.decode_sample(tok, pos, &s).unwrap();
    assert!((drawn as usize) < n_vocab);

    // Errors are typed.
    assert!(matches!(
        gm.forward(&[tok], n_ctx, Logits::Last),
        Err(engine::Error::ContextFull { .. })
    ));
    assert!(matches!(
        gm.forward(&[n_vocab as u32], 0, Logits::Last),
        Err(engine::Error::TokenOutOfRange { .. })
    ));
}

#[test]
fn gpu_model_matches_cpu_model_on_smollm2() {
    if skip() {
        return;
    }
    run(GpuOptions::default(), "features");
}

#[test]
fn gpu_model_matches_cpu_model_on_smollm2_baseline() {
    if skip() {
        return;
    }
    run(GpuOptions::baseline(), "baseline");
}
