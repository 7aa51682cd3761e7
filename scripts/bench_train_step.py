#!/usr/bin/env python3
"""One supervised training step (forward, backward, AdamW): artist (``cargo bench --bench
train_step``) and PyTorch + transformers on the same shape, batch and device, in one run,
printed as a markdown table with the ratio.

    pip install torch transformers
    python3 scripts/bench_train_step.py [--threads 2] [--batch 4] [--seq 128] [--steps 3]
    python3 scripts/bench_train_step.py --device cuda --model 1.5b --bf16 --batch 4 --seq 2048 \
        [--bench path/to/train_step]         # a GPU machine: the prebuilt bench binary

Shapes: ``small`` (the default) is 8 layers, hidden 512, 8 heads over 2 KV heads (head dim
64), MLP 1408, vocab 32768, untied (56M parameters); ``1.5b`` is Qwen2.5-1.5B's (tied).
Random weights (std 0.02). The batch is ``batch`` sequences of ``seq`` tokens with the
loss on every token after the first (mean cross-entropy). PyTorch: the transformers model
in train mode with its default attention (SDPA), ``loss.backward()``,
``clip_grad_norm_(1.0)``, ``torch.optim.AdamW`` (default foreach implementation). On the
CPU both use ``threads`` threads (``torch.set_num_threads``, ``RAYON_NUM_THREADS``). With
``--bf16``, PyTorch runs its f32 parameters under ``torch.autocast(bfloat16)`` (mixed
precision as the Python stacks train), artist keeps bf16 parameters with f32 AdamW masters
and runs its products and attention in bf16 (``--weights bf16 --matmul-dtype bf16
--attention-dtype bf16``); both accumulate in f32. Both time one warm-up step, then report
the median of ``steps`` steps; on a GPU every phase ends with a synchronize. With
``--lora-rank R`` both train LoRA adapters of rank R (alpha 2R, no dropout) on all seven
projections of every layer instead of every weight (PyTorch: PEFT's ``get_peft_model``).
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch

# Packages carried to a machine that lacks them (scripts/gpu_wheels.sh), after its own.
if os.environ.get("ARTIST_EXTRA_SITE"):
    sys.path.append(os.environ["ARTIST_EXTRA_SITE"])

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


SHAPES = {
    "small": dict(vocab_size=32768, hidden_size=512, intermediate_size=1408, num_hidden_layers=8,
                  num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=False),
    "1.5b": dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                 num_attention_heads=12, num_key_value_heads=2, tie_word_embeddings=True),
}


def torch_run(a):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    shape = SHAPES[a.model]
    cfg = Qwen2Config(**shape, rms_norm_eps=1e-6, rope_theta=1e6, max_position_embeddings=32768,
                      initializer_range=0.02)
    dev = a.device.split(":")[0] if a.device.startswith("cuda") else "cpu"
    with torch.device(a.device if dev == "cuda" else "cpu"):
        model = Qwen2ForCausalLM(cfg).float().train()
    if a.lora_rank:
        from peft import LoraConfig, get_peft_model
        model = get_peft_model(model, LoraConfig(r=a.lora_rank, lora_alpha=2 * a.lora_rank, lora_dropout=0.0,
                                                 target_modules="all-linear"))
        model.train()
    vocab = shape["vocab_size"]
    ids = torch.tensor([[(i * 7919 + b * 104729) % vocab for i in range(a.seq)] for b in range(a.batch)],
                       device=model.device)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    autocast = lambda: torch.autocast(dev, dtype=torch.bfloat16, enabled=a.bf16)
    times, phases = [], [0.0, 0.0, 0.0]
    for i in range(a.steps + 1):
        sync()
        t0 = time.perf_counter()
        with autocast():
            logits = model(ids).logits
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, vocab).float(),
                                                     ids[:, 1:].reshape(-1))
        loss_value = loss.item()
        t1 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        sync()
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step()
        sync()
        t3 = time.perf_counter()
        if i > 0:
            times.append(t3 - t0)
            for k, d in enumerate((t1 - t0, t2 - t1, t3 - t2)):
                phases[k] += d / a.steps
    times.sort()
    step_s = times[len(times) // 2]
    out = {"impl": "pytorch", "step_s": step_s, "forward_s": phases[0], "backward_s": phases[1],
           "optimizer_s": phases[2], "tokens_per_s": a.batch * a.seq / step_s, "loss": loss_value,
           "torch": torch.__version__,
           "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if dev == "cuda":
        out["peak_device_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def artist_run(a, checkpointing=False):
    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads))
    flags = ["--batch", str(a.batch), "--seq", str(a.seq), "--steps", str(a.steps), "--device", a.device,
             "--model", a.model]
    if a.bf16:
        flags += ["--weights", "bf16", "--matmul-dtype", "bf16", "--attention-dtype", "bf16"]
    if checkpointing:
        flags.append("--checkpointing")
    if a.lora_rank:
        flags += ["--lora-rank", str(a.lora_rank)]
    cmd = [a.bench, "--bench"] + flags if a.bench else ["cargo", "bench", "-q", "--bench", "train_step", "--"] + flags
    out = subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads([l for l in out.splitlines() if l.startswith("{")][-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    ap.add_argument("--model", default="small", choices=sorted(SHAPES))
    ap.add_argument("--bf16", action="store_true", help="bf16 products and attention (PyTorch: autocast)")
    ap.add_argument("--bench", help="a prebuilt train_step bench binary (default: cargo bench)")
    ap.add_argument("--no-checkpointing", action="store_true", help="skip the run with gradient checkpointing")
    ap.add_argument("--lora-rank", type=int, default=0, help="train LoRA adapters of this rank (PyTorch: PEFT)")
    a = ap.parse_args()
    if not a.bench:
        subprocess.run(["cargo", "bench", "--no-run", "-q", "--bench", "train_step"], cwd=ROOT, check=True)
    ours = artist_run(a)
    ckpt = None if a.no_checkpointing else artist_run(a, checkpointing=True)
    try:
        theirs = torch_run(a)
    except ImportError as e:
        # Our figures still count: print them alone, and say why the peer is missing.
        print(json.dumps({"artist": ours, "artist_checkpointing": ckpt, "pytorch": None}))
        print(f"\nPyTorch's half skipped: {e} (scripts/gpu_wheels.sh carries transformers)")
        print(f"artist: step {ours['step_s']:.3f} s, {ours['tokens_per_s']:.0f} tokens/s, "
              f"{ours['gflops']:.0f} GFLOP/s")
        return
    print(json.dumps({"artist": ours, "artist_checkpointing": ckpt, "pytorch": theirs}))
    print()
    where = a.device if a.device != "cpu" else f"{a.threads} threads"
    what = f"{a.model}, {a.batch} x {a.seq} tokens, {where}" + (", bf16" if a.bf16 else "")
    what += f", LoRA r{a.lora_rank}" if a.lora_rank else ""
    print(f"| {what} | artist | PyTorch {theirs['torch']} | artist / PyTorch |")
    print("| --- | --- | --- | --- |")
    for key, label in [("step_s", "step (s)"), ("forward_s", "forward (s)"), ("backward_s", "backward (s)"),
                       ("optimizer_s", "clip + AdamW (s)"), ("tokens_per_s", "tokens/s")]:
        ratio = theirs[key] / ours[key] if key != "tokens_per_s" else ours[key] / theirs[key]
        print(f"| {label} | {ours[key]:.3f} | {theirs[key]:.3f} | {ratio:.2f}x |")
    mem = "peak_device_mib" if a.device != "cpu" else "peak_rss_mib"
    print(f"| {'peak device memory' if a.device != 'cpu' else 'peak RSS'} (MiB) | {ours[mem]:.0f} | {theirs[mem]:.0f} | |")
    print(f"\nartist model FLOP rate: {ours['gflops']:.0f} GFLOP/s")
    if ckpt:
        print(f"with gradient checkpointing: step {ckpt['step_s']:.3f} s, peak {ckpt[mem]:.0f} MiB")


if __name__ == "__main__":
    main()
