#!/usr/bin/env bash
# GPU benchmark on any machine with a Vulkan GPU, from built binaries (no network, no Rust):
# synthetic SmolLM2-135M- and Llama-3.2-1B-shaped Q4_K_M models (`xtask synth-model`, a donor
# GGUF lends its tokenizer), then `slm bench --backend gpu` (pp128/tg128 and pp512), one JSON
# line per run in OUT_DIR/gpu-bench.jsonl. Takes 1-3 minutes on a discrete GPU.
#
#   tests/gpu-bench.sh BIN_DIR DONOR_GGUF OUT_DIR [BANDWIDTH_GB_S]
#
# BIN_DIR holds `slm` and `xtask` (target/release); BANDWIDTH_GB_S (the GPU's memory bandwidth)
# adds the per-token time as a multiple of the bandwidth floor.
set -euo pipefail
bin=$1 donor=$2 out=$3 bw=${4:-}
mkdir -p "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
extra=()
[ -n "$bw" ] && extra=(--bandwidth-gbs "$bw")
for shape in smollm2-135m llama-3.2-1b; do
  "$bin/xtask" synth-model --shape "$shape" --type q4_k_m --tokenizer "$donor" --out "$tmp/$shape.gguf"
  "$bin/slm" bench --model "$tmp/$shape.gguf" --backend gpu --prompt-tokens 128 --gen-tokens 128 \
    --ctx 1024 "${extra[@]}" | tee -a "$out/gpu-bench.jsonl"
  "$bin/slm" bench --model "$tmp/$shape.gguf" --backend gpu --prompt-tokens 512 --gen-tokens 16 \
    --ctx 1024 "${extra[@]}" | tee -a "$out/gpu-bench.jsonl"
  rm -f "$tmp/$shape.gguf"
done
