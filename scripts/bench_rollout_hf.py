#!/usr/bin/env python3
"""The peer of `cargo bench --bench rollout`: transformers' `generate` on the same shapes.

A Qwen2.5-shaped model with random bf16 weights (no download), B prompts x G samples of a
P-token prompt, exactly N new tokens each (`min_new_tokens = max_new_tokens`, so both sides
generate the same count), multinomial sampling at temperature 1 with no top-k/top-p; then
batch-1 decode of N tokens after the prompt, against the memory-bandwidth bound.

    python scripts/bench_rollout_hf.py [--device cpu|cuda] [--model 0.5b|1.5b|qwen3-0.6b] [--prompts 1]
        [--group 8] [--prompt-len 256] [--new 32] [--decode 32] [--ours FILE]

With `--ours FILE` (the JSON lines our bench printed), prints the ratios too. Needs torch
and transformers; CI does not run it.
"""

import argparse
import json
import os
import sys
import time

import torch

# Packages carried to a machine that lacks them (scripts/gpu_wheels.sh), after its own.
if os.environ.get("ARTIST_EXTRA_SITE"):
    sys.path.append(os.environ["ARTIST_EXTRA_SITE"])
from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM  # noqa: E402

SHAPES = {
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2),
    "1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2),
    "qwen3-0.6b": dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                       num_key_value_heads=8, head_dim=128, attention_bias=False),
}
BANDWIDTH = [("H200", 4800.0), ("H100", 3350.0), ("A100-SXM4-80GB", 2039.0), ("A100", 1555.0)]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default="0.5b", choices=sorted(SHAPES))
    ap.add_argument("--prompts", type=int, default=1)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=256)
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--decode", type=int, default=32)
    ap.add_argument("--bandwidth-gbs", type=float, default=None)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"],
                    help="weights and compute (ours: bf16 weights, f32 activations)")
    ap.add_argument("--ours", default=None, help="our bench's JSON lines, for ratios")
    a = ap.parse_args()

    device = torch.device(a.device)
    torch.manual_seed(0)
    qwen3 = a.model.startswith("qwen3")
    config = (Qwen3Config if qwen3 else Qwen2Config)(
        vocab_size=151_936, rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=True,
        max_position_embeddings=32_768, **SHAPES[a.model])
    model = (Qwen3ForCausalLM if qwen3 else Qwen2ForCausalLM)(config).to(getattr(torch, a.dtype)).to(device).eval()
    params = sum(p.numel() for p in model.parameters())
    # The prompts our bench uses.
    prompts = torch.tensor([[(i * 7919 + p * 104_729) % 150_000 for i in range(a.prompt_len)]
                            for p in range(a.prompts)], device=device)
    common = dict(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, pad_token_id=0, eos_token_id=None)
    threads = torch.get_num_threads()

    with torch.inference_mode():
        model.generate(prompts[:1], max_new_tokens=2, min_new_tokens=2, **common)  # warm-up
        sync(device)
        t0 = time.perf_counter()
        out = model.generate(prompts, max_new_tokens=a.new, min_new_tokens=a.new, num_return_sequences=a.group,
                             **common)
        sync(device)
        wall = time.perf_counter() - t0
        sampled = (out.shape[1] - a.prompt_len) * out.shape[0]
        rollout = {"peer": "transformers.generate", "device": str(device), "model": a.model, "dtype": a.dtype,
                   "threads": threads,
                   "prompts": a.prompts, "group": a.group, "prompt_len": a.prompt_len, "max_new": a.new,
                   "sampled_tokens": sampled, "wall_s": wall, "sampled_tokens_per_s": sampled / wall}
        print(json.dumps(rollout))

        decode = None
        if a.decode > 0:
            # Batch-1 decode: the time of N + 1 new tokens minus that of 1 (the prefill).
            def timed(n):
                sync(device)
                t = time.perf_counter()
                model.generate(prompts[:1], max_new_tokens=n, min_new_tokens=n, **common)
                sync(device)
                return time.perf_counter() - t

            s = timed(a.decode + 1) - timed(1)
            tps = a.decode / s
            bw = a.bandwidth_gbs
            if bw is None and device.type == "cuda":
                name = torch.cuda.get_device_name(device)
                bw = next((b for k, b in BANDWIDTH if k in name), None)
            gbs = tps * params * model.dtype.itemsize / 1e9
            decode = {"peer": "transformers.generate", "batch1_decode_tokens": a.decode, "tokens_per_s": tps,
                      "ms_per_token": 1e3 / tps, "weight_gb": params * model.dtype.itemsize / 1e9, "weight_gbs": gbs,
                      "bandwidth_gbs": bw, "fraction_of_bandwidth_bound": gbs / bw if bw else None,
                      "device": str(device)}
            print(json.dumps(decode))

    if a.ours:
        ours = [json.loads(line) for line in open(a.ours) if line.startswith("{")]
        dec = next((o for o in ours if "batch1_decode_tokens" in o), None)
        for share in (False, True):
            o = next((o for o in ours if o.get("share_prefix") is share), None)
            if o:
                r = o["sampled_tokens_per_s"] / rollout["sampled_tokens_per_s"]
                how = "prompt prefilled once per group" if share else "prompt prefilled per rollout, as transformers"
                print(f"rollouts ({how}): ours {o['sampled_tokens_per_s']:.1f} tok/s, transformers "
                      f"{rollout['sampled_tokens_per_s']:.1f} tok/s: {r:.2f}x", file=sys.stderr)
        if dec and decode:
            r = dec["tokens_per_s"] / decode["tokens_per_s"]
            print(f"batch-1 decode: ours {dec['tokens_per_s']:.2f} tok/s, transformers "
                  f"{decode['tokens_per_s']:.2f} tok/s: {r:.2f}x", file=sys.stderr)


if __name__ == "__main__":
    main()
