#!/usr/bin/env python3
"""The CUDA kernels of artist beside PyTorch on the same GPU, the same shapes, in one run.

    python3 scripts/bench_cuda.py [--bench PATH] [--out DIR]

Runs the criterion benchmark ``cuda_kernels`` (``benches/cuda_kernels.rs``; PATH is its
prebuilt binary, by default found under target/release/deps or gpu-bundle/), reads each
median from criterion's estimates, runs PyTorch's equivalent of every case (CUDA events, the
median of 20 timed runs after 5 warm-ups), measures the two ceilings on this GPU (a device
copy through PyTorch for bandwidth, an 8192^3 bf16 matmul for matrix throughput) and prints
a markdown table: time, GB/s or TFLOP/s, the share of the measured ceiling and of the
datasheet's, and artist / PyTorch (above 1: artist is faster). JSON with every number goes
to DIR/bench_cuda.json.

PyTorch's side is what a PyTorch trainer runs for the same step: eager ops for the element-
wise and row kernels (Qwen2RMSNorm and rotate-half RoPE as transformers writes them),
F.linear (cuBLAS) for the products, SDPA for attention (a decode step's over a dense cache:
PyTorch has no paged one), torch.optim.AdamW(fused=True).
"""
import argparse
import glob
import json
import os
import subprocess
import sys

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T, H, I, HEADS, KV, D, V, ROWS, ADAM, ALEN = 4096, 3584, 18944, 28, 4, 128, 152064, 1024, 1 << 28, 4096
DROWS, DLEN = 32, 4096  # a decode step: sequences, positions each
DATASHEET = {  # (bytes/s, dense bf16 FLOP/s)
    "H100": (3.35e12, 989e12),
    "H200": (4.8e12, 989e12),
    "A100": (2.0e12, 312e12),
}


def median_ms(fn, warmup=5, reps=20):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2]


def rms_norm(x, w, eps=1e-6):  # transformers' Qwen2RMSNorm
    dtype = x.dtype
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return w * h.to(dtype)


def rope(q, cos, sin):  # transformers' apply_rotary_pos_emb (rotate half)
    x1, x2 = q[..., : q.shape[-1] // 2], q[..., q.shape[-1] // 2 :]
    rot = torch.cat((-x2, x1), dim=-1)
    return q * cos + rot * sin


def torch_cases():
    dev, bf = "cuda", torch.bfloat16
    g = torch.Generator(device=dev).manual_seed(0)
    r = lambda *s, dtype=bf: torch.randn(*s, device=dev, generator=g, dtype=torch.float32).to(dtype)
    out = {}
    x = r(T * 16, H)
    out["mem/copy_bf16"] = median_ms(lambda: x.clone())
    a, b = r(T, H), r(T, H)
    out["mem/add_bf16"] = median_ms(lambda: a + b)
    af = r(T, H, dtype=torch.float32)
    out["mem/cast_f32_bf16"] = median_ms(lambda: af.to(bf))
    w = r(H)
    out["mem/rms_norm_bf16"] = median_ms(lambda: rms_norm(a, w))
    q = r(1, T, HEADS, D)
    pos = torch.arange(T, device=dev, dtype=torch.float32)
    inv = 1.0 / (1e6 ** (torch.arange(0, D, 2, device=dev, dtype=torch.float32) / D))
    ang = torch.cat([pos[:, None] * inv[None]] * 2, -1)
    cos, sin = ang.cos()[None, :, None, :].to(bf), ang.sin()[None, :, None, :].to(bf)
    out["mem/rope_bf16"] = median_ms(lambda: rope(q, cos, sin))
    gu = r(T, 2 * I)
    out["mem/silu_mul_bf16"] = median_ms(lambda: F.silu(gu[:, :I]) * gu[:, I:])
    logits = r(ROWS, V, dtype=torch.float32)
    out["mem/softmax_f32_vocab"] = median_ms(lambda: torch.softmax(logits, -1))
    out["mem/log_softmax_f32_vocab"] = median_ms(lambda: torch.log_softmax(logits, -1))
    def entropy(z):  # as the Python stacks compute it: softmax, then -sum p log p
        lp = torch.log_softmax(z, -1)
        return -(lp.exp() * lp).sum(-1)
    out["mem/softmax_entropy_f32_vocab"] = median_ms(lambda: entropy(logits))
    table = r(V, H)
    ids = (torch.arange(T, device=dev) * 7919) % V
    out["mem/embedding_bf16"] = median_ms(lambda: F.embedding(ids, table))
    z = r(ROWS, V, dtype=torch.float32)
    gv = torch.full((ROWS, 1), 0.5, device=dev)
    lse = torch.full((ROWS, 1), 10.0, device=dev)
    tg = (torch.arange(ROWS, device=dev) * 31) % V

    def logprob_grad():  # what autograd computes for -g * log_softmax(z)[t], in place
        d = torch.exp(z - lse).mul_(-gv)
        d[torch.arange(ROWS, device=dev), tg] += gv[:, 0]
        return d

    out["mem/token_logprob_grad_f32"] = median_ms(logprob_grad)
    gh = torch.full((ROWS, 1), 0.25, device=dev)
    h = torch.full((ROWS, 1), 3.0, device=dev)

    def logprob_entropy_grad():  # the same with an entropy bonus's gradient, as eager ops
        lp = z - lse
        d = -torch.exp(lp) * (gv + gh * (lp + h))
        d[torch.arange(ROWS, device=dev), tg] += gv[:, 0]
        return d

    out["mem/token_logprob_entropy_grad_f32"] = median_ms(logprob_entropy_grad)
    p = torch.nn.Parameter(r(ADAM, dtype=torch.float32))
    p.grad = r(ADAM, dtype=torch.float32)
    opt = torch.optim.AdamW([p], lr=1e-5, fused=True)
    out["mem/adamw_f32"] = median_ms(opt.step)
    out["mem/sum_squares_f32"] = median_ms(lambda: torch.linalg.vector_norm(p.grad, dtype=torch.float64))
    qkv = (HEADS + 2 * KV) * D
    for name, (m, k, n) in [("linear_qkv", (T, H, qkv)), ("linear_up", (T, H, 2 * I)), ("linear_down", (T, I, H))]:
        xx, ww = r(m, k), r(n, k)
        out[f"flops/{name}_bf16"] = median_ms(lambda: F.linear(xx, ww))
    torch.backends.cuda.matmul.allow_tf32 = False
    xx, ww = r(T, H, dtype=torch.float32), r(H, H, dtype=torch.float32)
    out["flops/linear_square_f32"] = median_ms(lambda: F.linear(xx, ww))
    qa = r(1, HEADS, ALEN, D).requires_grad_(True)
    ka, va = r(1, KV, ALEN, D).requires_grad_(True), r(1, KV, ALEN, D).requires_grad_(True)
    sdpa = lambda: F.scaled_dot_product_attention(qa, ka, va, is_causal=True, enable_gqa=True)
    out["flops/attention_fwd_bf16"] = median_ms(sdpa)
    out["flops/attention_fwd_wgmma_bf16"] = out["flops/attention_fwd_bf16"]  # our Hopper forward, same peer
    o = sdpa()
    do = torch.randn_like(o)
    out["flops/attention_bwd_bf16"] = median_ms(lambda: torch.autograd.grad(o, (qa, ka, va), do, retain_graph=True))
    out["flops/attention_bwd_wgmma_bf16"] = out["flops/attention_bwd_bf16"]  # both passes on wgmma
    # One decode step: each sequence's one query over its own dense cache (PyTorch has no paged
    # cache; a dense one is the easier read).
    qd = r(DROWS, HEADS, 1, D)
    kd, vd = r(DROWS, KV, DLEN, D), r(DROWS, KV, DLEN, D)
    try:
        with torch.no_grad():
            out["mem/paged_decode_bf16"] = median_ms(
                lambda: F.scaled_dot_product_attention(qd, kd, vd, enable_gqa=True))
    except (RuntimeError, TypeError) as e:  # an older PyTorch without enable_gqa
        print(f"PyTorch decode attention skipped: {e}", file=sys.stderr)
    # Batch-1 decode products of a Qwen2.5-1.5B shape: a bf16 row times a bf16 weight.
    h, i, qkv = 1536, 8960, (12 + 2 * 2) * 128
    for name, k, n in [("qkv", h, qkv), ("o", h, h), ("gate_up", h, 2 * i), ("down", i, h)]:
        xg, wg = r(1, k), r(n, k)
        with torch.no_grad():
            out[f"mem/gemv_1p5b_{name}"] = median_ms(lambda: F.linear(xg, wg))
    # The sampler (benches/cuda_kernels.rs, bench_sampling): a token and its logprob per row,
    # brought back to the host as the rollout engine needs them.
    for rows in [1, 64]:
        lg = r(rows, V, dtype=torch.float32) * 2.5

        def draw(lg=lg, top_p=1.0):
            with torch.no_grad():
                lp = torch.log_softmax(lg, -1)
                if top_p < 1.0:
                    sl, si = torch.sort(lg, -1, descending=True)
                    sp = torch.softmax(sl, -1)
                    drop = torch.cumsum(sp, -1) - sp > top_p
                    sp = sp.masked_fill(drop, 0.0)
                    tok = si.gather(-1, torch.multinomial(sp, 1, generator=g))
                else:
                    tok = torch.multinomial(lp.exp(), 1, generator=g)
                return tok.cpu(), lp.gather(-1, tok).cpu()

        out[f"mem/sample_temperature_{rows}"] = median_ms(draw)
        out[f"mem/sample_top_p_{rows}"] = median_ms(lambda: draw(top_p=0.95))
    return out


def ceilings():
    x = torch.empty(1 << 31, dtype=torch.uint8, device="cuda")
    bw = 2 * x.numel() / (median_ms(lambda: x.clone()) / 1e3)
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    tf = 2 * 8192**3 / (median_ms(lambda: a @ b) / 1e3)
    return bw, tf


def find_bench(path):
    if path:
        return path
    for pattern in ["gpu-bundle/cuda_kernels", "target/release/deps/cuda_kernels-*"]:
        hits = [p for p in glob.glob(os.path.join(ROOT, pattern)) if os.access(p, os.X_OK) and not p.endswith(".d")]
        if hits:
            return max(hits, key=os.path.getmtime)
    sys.exit("no cuda_kernels bench binary: build it with `cargo bench --bench cuda_kernels --no-run` or pass --bench")


def artist_results(bench, home):
    env = dict(os.environ, CRITERION_HOME=home)
    subprocess.run([bench, "--bench", "--noplot"], check=True, env=env)
    out = {}
    for est in glob.glob(os.path.join(home, "*", "*", "new", "estimates.json")):
        parts = est.split(os.sep)
        group, name = parts[-4], parts[-3]
        meta = json.load(open(os.path.join(os.path.dirname(est), "benchmark.json")))
        ms = json.load(open(est))["median"]["point_estimate"] / 1e6
        out[f"{group}/{name}"] = (ms, meta.get("throughput") or {})
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    args = ap.parse_args()
    name = torch.cuda.get_device_name()
    sheet = next((v for k, v in DATASHEET.items() if k in name), (float("nan"), float("nan")))
    home = os.path.join(args.out, "criterion")
    ours = artist_results(find_bench(args.bench), home)
    theirs = torch_cases()
    bw, tf = ceilings()
    rows = []
    print(f"\n{name}; measured ceilings: copy {bw / 1e12:.2f} TB/s, bf16 matmul {tf / 1e12:.0f} TFLOP/s\n")
    print("| case | artist ms | PyTorch ms | artist rate | % of measured ceiling | % of datasheet | artist / PyTorch |")
    print("|---|---|---|---|---|---|---|")
    for key in sorted(ours):
        ms, thr = ours[key]
        pt = theirs.get(key)
        if "BytesDecimal" in thr:
            rate, ceil, sheet_ceil, unit = thr["BytesDecimal"] / (ms / 1e3), bw, sheet[0], "GB/s"
            shown = rate / 1e9
        else:
            rate, ceil, sheet_ceil, unit = thr.get("Elements", 0) / (ms / 1e3), tf, sheet[1], "TFLOP/s"
            shown = rate / 1e12
        ratio = pt / ms if pt else float("nan")
        rows.append({"case": key, "artist_ms": ms, "torch_ms": pt, "rate": rate, "unit": unit,
                     "of_measured": rate / ceil, "of_datasheet": rate / sheet_ceil, "artist_over_torch": ratio})
        print(f"| {key} | {ms:.3f} | {pt if pt is None else f'{pt:.3f}'} | {shown:.1f} {unit} | "
              f"{100 * rate / ceil:.0f}% | {100 * rate / sheet_ceil:.0f}% | {ratio:.2f}x |")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "bench_cuda.json"), "w") as f:
        json.dump({"device": name, "copy_bytes_per_s": bw, "bf16_flops": tf, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
