#!/usr/bin/env python3
"""llama.cpp natively on the same shape as `slm bench`: a prompt of N tokens in one batch
(prefill), then M single-token steps continuing it (decode), median of R repetitions, at the
given thread count. One JSON line, the fields of `slm bench`'s:

  {"engine":"llama.cpp","model":…,"threads":N,"prompt_tokens":…,"gen_tokens":…,
   "prefill_tok_s":…,"decode_tok_s":…,"load_s":…,"peak_rss_mib":…}

Needs `pip install llama-cpp-python==0.3.36` (built from source, see ../shared/TOOLCHAIN.md);
`cargo xtask bench --llama-cpp` runs it beside `slm bench`, interleaved, and prints the ratios.
Each step is one `llama_decode` call through the C API (ctypes, a few microseconds a call;
no logits are copied out or sampled), timed around the call and `llama_synchronize`.

usage: bench-llamacpp.py MODEL.gguf [--threads N] [--prompt-tokens N] [--gen-tokens N] [--reps N]
"""
import argparse
import json
import resource
import statistics
import sys
import time


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    try:
        import llama_cpp
    except ImportError:
        print("bench-llamacpp: no llama_cpp module: pip install llama-cpp-python==0.3.36 "
              "(see ../shared/TOOLCHAIN.md)", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    llm = llama_cpp.Llama(
        model_path=a.model,
        n_ctx=a.prompt_tokens + a.gen_tokens + 16,
        n_batch=max(a.prompt_tokens, 32),
        n_ubatch=max(a.prompt_tokens, 32),
        n_threads=a.threads,
        n_threads_batch=a.threads,
        use_mmap=True,
        verbose=False,
    )
    load_s = time.perf_counter() - t0
    n_vocab = llm.n_vocab()
    # Token ids away from the special ones at the start of every vocabulary; their values do not
    # change the work.
    prompt = [(1000 + 7 * i) % n_vocab for i in range(a.prompt_tokens)]
    step = 1000 % n_vocab
    ctx = llm.ctx

    def decode_batch(ids) -> None:
        arr = (llama_cpp.llama_token * len(ids))(*ids)
        rc = llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(arr, len(ids)))
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")
        llama_cpp.llama_synchronize(ctx)

    prefill, decode = [], []
    for _ in range(a.reps):
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
        t = time.perf_counter()
        decode_batch(prompt)
        prefill.append(a.prompt_tokens / (time.perf_counter() - t))
        t = time.perf_counter()
        for _ in range(a.gen_tokens):
            decode_batch([step])
        decode.append(a.gen_tokens / (time.perf_counter() - t))
    print(json.dumps({
        "engine": "llama.cpp",
        "model": a.model,
        "threads": a.threads,
        "prompt_tokens": a.prompt_tokens,
        "gen_tokens": a.gen_tokens,
        "prefill_tok_s": statistics.median(prefill),
        "decode_tok_s": statistics.median(decode),
        "load_s": load_s,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
