#!/usr/bin/env python3
"""Prefill and decode tokens/s of a Qwen2.5-0.5B-shaped model (or Qwen3-0.6B's) with random
weights: artist (``cargo bench --bench qwen2_throughput``) and PyTorch + transformers on the
same shapes and thread count, in one run, printed as a markdown table with the ratio.

    pip install torch transformers
    python3 scripts/bench_qwen2_cpu.py [--model qwen2.5-0.5b|qwen3-0.6b] [--threads 2] [--prompt 512] [--decode 32] [--dtypes bf16,f32]

PyTorch runs the transformers model in eval mode under ``torch.inference_mode()`` with a
KV cache (``past_key_values``), greedy, one token per step, ``torch.set_num_threads``.
artist runs with ``RAYON_NUM_THREADS`` set to the same count; a bf16 model runs twice,
with its weights widened to f32 for the products (the CPU's default) and with bf16 products
(``--matmul-dtype bf16``: AMX tiles or AVX512-BF16 where the CPU has them), which is what
PyTorch's bf16 model computes. Decode is memory-bound; the
bound column is (weight bytes) / (the read bandwidth of every thread, measured by the artist
run: what streaming the weights once per token can at most reach); the next one also counts
the KV cache each step reads (artist's cache dtype, f32 on the CPU, averaged over the
steps' context lengths).
"""
import argparse
import inspect
import json
import os
import subprocess
import sys
import time

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# transformers 5.x renamed `past_key_values` to `cache` (inputs and outputs), model by model.
def cache_kw(model_class):
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


def cache_of(out, kw):
    return getattr(out, "cache", None) if kw == "cache" else out.past_key_values


SHAPES = {
    "qwen2.5-0.5b": (Qwen2Config, Qwen2ForCausalLM, dict(
        hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
        num_key_value_heads=2, max_position_embeddings=32768,
    )),
    "qwen3-0.6b": (Qwen3Config, Qwen3ForCausalLM, dict(
        hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
        num_key_value_heads=8, head_dim=128, attention_bias=False, max_position_embeddings=40960,
    )),
}


def torch_run(model_name, dtype, prompt, decode, threads):
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config_class, model_class, shape = SHAPES[model_name]
    cfg = config_class(
        vocab_size=151936, rms_norm_eps=1e-6, rope_theta=1e6, tie_word_embeddings=True, initializer_range=0.02,
        **shape,
    )
    model = model_class(cfg).to({"bf16": torch.bfloat16, "f32": torch.float32}[dtype]).eval()
    ids = torch.tensor([[(i * 7919) % 151000 for i in range(prompt)]])
    with torch.inference_mode():
        model(ids[:, :8])  # warm-up
        t = time.perf_counter()
        out = model(ids, use_cache=True)
        prefill = time.perf_counter() - t
        kw = cache_kw(model_class)
        past, nxt = cache_of(out, kw), out.logits[:, -1:].argmax(-1)
        t = time.perf_counter()
        for _ in range(decode):
            out = model(nxt, use_cache=True, **{kw: past})
            past, nxt = cache_of(out, kw), out.logits[:, -1:].argmax(-1)
        dec = time.perf_counter() - t
    return prompt / prefill, decode / dec


def artist_run(model_name, dtype, prompt, decode, threads, matmul="f32"):
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    cmd = ["cargo", "bench", "-q", "--bench", "qwen2_throughput", "--", "--model", model_name,
           "--dtype", dtype, "--matmul-dtype", matmul, "--prompt", str(prompt), "--decode", str(decode)]
    out = subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=sorted(SHAPES), default="qwen2.5-0.5b")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--decode", type=int, default=32)
    ap.add_argument("--dtypes", default="bf16,f32")
    a = ap.parse_args()
    subprocess.run(["cargo", "bench", "--no-run", "-q", "--bench", "qwen2_throughput"], cwd=ROOT, check=True)
    print(f"{a.model} shape, random weights, {a.threads} threads, prompt {a.prompt}, decode {a.decode}; "
          f"torch {torch.__version__}")
    print("| dtype | engine | prefill tok/s | decode tok/s | decode bound tok/s | decode / bound "
          "| bound with KV tok/s | decode / bound with KV |")
    print("|---|---|---|---|---|---|---|---|")
    for dt in a.dtypes.split(","):
        runs = [("artist", artist_run(a.model, dt, a.prompt, a.decode, a.threads))]
        if dt == "bf16":
            runs.append(("artist, bf16 products", artist_run(a.model, dt, a.prompt, a.decode, a.threads, "bf16")))
        tp, td = torch_run(a.model, dt, a.prompt, a.decode, a.threads)
        r = runs[0][1]
        bound, kv_bound = r["decode_bound_tokens_per_s"], r["decode_bound_with_kv_tokens_per_s"]
        for name, r in runs:
            ad = r["decode_tokens_per_s"]
            print(f"| {dt} | {name} | {r['prefill_tokens_per_s']:.1f} | {ad:.2f} | {bound:.1f} "
                  f"| {ad / bound:.0%} | {kv_bound:.1f} | {ad / kv_bound:.0%} |")
        print(f"| {dt} | PyTorch | {tp:.1f} | {td:.2f} | {bound:.1f} | {td / bound:.0%} | {kv_bound:.1f} "
              f"| {td / kv_bound:.0%} |")
        for name, r in runs:
            print(f"| {dt} | {name} / PyTorch | {r['prefill_tokens_per_s'] / tp:.2f}x | "
                  f"{r['decode_tokens_per_s'] / td:.2f}x | | | | |")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
