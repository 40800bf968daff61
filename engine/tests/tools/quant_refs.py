#!/usr/bin/env python3
"""Write dequantization reference fixtures for engine/tests/quant_reference.rs.

The expected values come from the `gguf` Python package's numpy dequantizer
(`gguf.quants.dequantize`), an implementation independent of the engine's Rust code.

Usage:  pip install gguf numpy
        python3 engine/tests/tools/quant_refs.py [OUT_DIR]      (default: <repo>/target/quant-refs)

Cases written (one `<case>.qref` file each, plus MANIFEST.txt listing them):
  random_<type>       4 rows x 768 elements of random bytes for every weight type, with random
                      finite f16 scales (including a few subnormal ones) so results are finite;
  <model>__<tensor>   the first rows of real tensors of the types the bundled models use
                      (SmolLM2-135M Q4_1: q4_1, q8_0, f32; gemma-3-270m Q4_K_M: q5_0, q4_K,
                      q6_K, q8_0).

File format (little-endian):
  8 bytes  magic b"QREF\\x01\\x00\\x00\\x00"
  u32      ggml type id
  u32      n_rows
  u32      n_cols (elements per row)
  u32      name length, then the UTF-8 case name
  bytes    n_rows rows of GGUF blocks (row size follows from type and n_cols)
  f32      n_rows * n_cols expected values, row-major
"""

import struct
import sys
from pathlib import Path

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T

REPO = Path(__file__).resolve().parents[3]
MAGIC = b"QREF\x01\x00\x00\x00"

# (type, elements per block, bytes per block, byte offsets of f16 scale fields in a block)
WEIGHT_TYPES = [
    (T.F32, 1, 4, []),
    (T.F16, 1, 2, []),
    (T.BF16, 1, 2, []),
    (T.Q4_0, 32, 18, [0]),
    (T.Q4_1, 32, 20, [0, 2]),
    (T.Q5_0, 32, 22, [0]),
    (T.Q5_1, 32, 24, [0, 2]),
    (T.Q8_0, 32, 34, [0]),
    (T.Q2_K, 256, 84, [80, 82]),
    (T.Q3_K, 256, 110, [108]),
    (T.Q4_K, 256, 144, [0, 2]),
    (T.Q5_K, 256, 176, [0, 2]),
    (T.Q6_K, 256, 210, [208]),
]

MODELS = [
    ("smollm2", REPO / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf", [T.Q4_1, T.Q8_0, T.F32]),
    ("gemma3", REPO / "models" / "gemma-3-270m-q4_k_m.gguf", [T.Q5_0, T.Q4_K, T.Q6_K, T.Q8_0]),
]

ROWS = 4
COLS = 768  # a multiple of both block sizes
TENSORS_PER_TYPE = 2


def type_name(t: T) -> str:
    # Match ggml names ("q4_K"), which the Rust side also prints.
    return t.name.lower().replace("_k", "_K")


def write_case(out_dir: Path, name: str, qtype: T, n_cols: int, raw: np.ndarray) -> None:
    raw = np.ascontiguousarray(raw, dtype=np.uint8)
    expected = gguf.quants.dequantize(raw, qtype).astype(np.float32).reshape(-1)
    n_rows = raw.shape[0]
    if expected.size != n_rows * n_cols or not np.all(np.isfinite(expected)):
        raise SystemExit(f"{name}: bad reference ({expected.size} values, expected {n_rows * n_cols})")
    name_b = name.encode()
    with open(out_dir / f"{name}.qref", "wb") as f:
        f.write(MAGIC)
        f.write(struct.pack("<IIII", int(qtype), n_rows, n_cols, len(name_b)))
        f.write(name_b)
        f.write(raw.tobytes())
        f.write(expected.astype("<f4").tobytes())


def random_scales(rng: np.random.Generator, n: int) -> np.ndarray:
    mag = np.exp(rng.uniform(np.log(1e-4), np.log(2.0), n))
    sign = rng.choice([-1.0, 1.0], n)
    vals = (mag * sign).astype(np.float16)
    # A few subnormal f16 scales exercise the f16 -> f32 conversion paths.
    sub = rng.random(n) < 0.05
    vals[sub] = (rng.integers(1, 1024, sub.sum()) * 2.0**-24 * sign[sub]).astype(np.float16)
    return vals


def random_rows(rng: np.random.Generator, qtype: T, bs: int, ts: int, scale_offsets: list) -> np.ndarray:
    if qtype == T.F32:
        return rng.standard_normal((ROWS, COLS)).astype("<f4").view(np.uint8)
    if qtype == T.F16:
        return (rng.standard_normal((ROWS, COLS)) * 3).astype("<f2").view(np.uint8)
    if qtype == T.BF16:
        f = (rng.standard_normal((ROWS, COLS)) * 3).astype("<f4")
        return (f.view("<u4") >> 16).astype("<u2").view(np.uint8)
    n_blocks = ROWS * COLS // bs
    blocks = rng.integers(0, 256, (n_blocks, ts), dtype=np.uint8)
    for off in scale_offsets:
        blocks[:, off : off + 2] = random_scales(rng, n_blocks).astype("<f2").view(np.uint8).reshape(n_blocks, 2)
    return blocks.reshape(ROWS, COLS // bs * ts)


def main() -> None:
    out_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "target" / "quant-refs"
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*.qref"):
        old.unlink()
    names = []
    rng = np.random.default_rng(20240611)
    for qtype, bs, ts, offs in WEIGHT_TYPES:
        name = f"random_{type_name(qtype)}"
        write_case(out_dir, name, qtype, COLS, random_rows(rng, qtype, bs, ts, offs))
        names.append(name)

    for label, path, wanted in MODELS:
        if not path.exists():
            raise SystemExit(f"model file {path} is missing; it is needed for the real-tensor fixtures")
        reader = gguf.GGUFReader(path)
        for qtype in wanted:
            tensors = [t for t in reader.tensors if t.tensor_type == qtype][:TENSORS_PER_TYPE]
            if not tensors:
                raise SystemExit(f"{path.name} has no {qtype.name} tensor")
            for t in tensors:
                n_cols = int(t.shape[0])
                data = np.asarray(t.data)
                if data.ndim == 1:
                    data = data.reshape(1, -1)
                raw = data[:ROWS].view(np.uint8).reshape(min(ROWS, data.shape[0]), -1)
                name = f"{label}__{t.name}"
                write_case(out_dir, name, qtype, n_cols, raw)
                names.append(name)

    (out_dir / "MANIFEST.txt").write_text("".join(n + "\n" for n in names))
    print(f"wrote {len(names)} cases to {out_dir}")


if __name__ == "__main__":
    main()
