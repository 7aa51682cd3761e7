#!/usr/bin/env python3
"""One supervised training step (forward, backward, AdamW) of a 56M-parameter Qwen2 shape:
artist (``cargo bench --bench train_step``) and PyTorch + transformers on the same shape,
batch and thread count, in one run, printed as a markdown table with the ratio.

    pip install torch transformers
    python3 scripts/bench_train_step.py [--threads 2] [--batch 4] [--seq 128] [--steps 3]

Shape: 8 layers, hidden 512, 8 heads over 2 KV heads (head dim 64), MLP 1408, vocab 32768,
untied, float32, random weights (std 0.02). The batch is ``batch`` sequences of ``seq``
tokens with the loss on every token after the first (mean cross-entropy). PyTorch: the
transformers model in train mode with its default attention (SDPA), ``loss.backward()``,
``clip_grad_norm_(1.0)``, ``torch.optim.AdamW`` (default foreach implementation),
``torch.set_num_threads``. artist runs with ``RAYON_NUM_THREADS`` set to the same count.
Both time one warm-up step, then report the median of ``steps`` steps.
"""
import argparse
import json
import os
import resource
import subprocess
import time

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def torch_run(threads, batch, seq, steps):
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = Qwen2Config(
        vocab_size=32768, hidden_size=512, intermediate_size=1408, num_hidden_layers=8,
        num_attention_heads=8, num_key_value_heads=2, rms_norm_eps=1e-6, rope_theta=1e6,
        max_position_embeddings=32768, tie_word_embeddings=False, initializer_range=0.02,
    )
    model = Qwen2ForCausalLM(cfg).float().train()
    ids = torch.tensor([[(i * 7919 + b * 104729) % 32768 for i in range(seq)] for b in range(batch)])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times, phases = [], [0.0, 0.0, 0.0]
    for i in range(steps + 1):
        t0 = time.perf_counter()
        logits = model(ids).logits
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 32768), ids[:, 1:].reshape(-1))
        t1 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        t3 = time.perf_counter()
        if i > 0:
            times.append(t3 - t0)
            for k, d in enumerate((t1 - t0, t2 - t1, t3 - t2)):
                phases[k] += d / steps
    times.sort()
    step_s = times[len(times) // 2]
    return {"impl": "pytorch", "step_s": step_s, "forward_s": phases[0], "backward_s": phases[1],
            "optimizer_s": phases[2], "tokens_per_s": batch * seq / step_s, "loss": loss.item(),
            "torch": torch.__version__,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def artist_run(threads, batch, seq, steps, checkpointing=False):
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    cmd = ["cargo", "bench", "-q", "--bench", "train_step", "--",
           "--batch", str(batch), "--seq", str(seq), "--steps", str(steps)]
    if checkpointing:
        cmd.append("--checkpointing")
    out = subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads([l for l in out.splitlines() if l.startswith("{")][-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=3)
    a = ap.parse_args()
    subprocess.run(["cargo", "bench", "--no-run", "-q", "--bench", "train_step"], cwd=ROOT, check=True)
    ours = artist_run(a.threads, a.batch, a.seq, a.steps)
    ckpt = artist_run(a.threads, a.batch, a.seq, a.steps, checkpointing=True)
    theirs = torch_run(a.threads, a.batch, a.seq, a.steps)
    print(json.dumps({"artist": ours, "artist_checkpointing": ckpt, "pytorch": theirs}))
    print()
    print(f"| {a.batch} x {a.seq} tokens, {a.threads} threads | artist | PyTorch {theirs['torch']} | artist / PyTorch |")
    print("| --- | --- | --- | --- |")
    for key, label in [("step_s", "step (s)"), ("forward_s", "forward (s)"), ("backward_s", "backward (s)"),
                       ("optimizer_s", "clip + AdamW (s)"), ("tokens_per_s", "tokens/s")]:
        ratio = theirs[key] / ours[key] if key != "tokens_per_s" else ours[key] / theirs[key]
        print(f"| {label} | {ours[key]:.3f} | {theirs[key]:.3f} | {ratio:.2f}x |")
    print(f"| peak RSS (MiB) | {ours['peak_rss_mib']:.0f} | {theirs['peak_rss_mib']:.0f} | |")
    print(f"\nartist model FLOP rate: {ours['gflops']:.0f} GFLOP/s; with gradient checkpointing: "
          f"step {ckpt['step_s']:.3f} s, peak RSS {ckpt['peak_rss_mib']:.0f} MiB")


if __name__ == "__main__":
    main()
