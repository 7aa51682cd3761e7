#!/usr/bin/env python3
"""Reference values for linear layers that multiply in bf16 (artist's `matmul_dtype = "bf16"`)
and for a KV cache that stores bf16 (`kv_cache_dtype = "bf16"`).

What it makes
-------------
The semantics under test: every linear layer of the model (q/k/v/o projections, gate/up/
down projections, the LM head) rounds its input activations and its weight to bf16 (round
to nearest even), multiplies them exactly and sums the products into an f32 result; the
bias is added in f32. Backward rounds the output gradient to bf16 and forms
``dx = g_bf16 @ w_bf16`` and ``dw = g_bf16^T @ x_bf16`` the same way, returning f32
gradients (``db`` sums the unrounded gradient). Everything else (embedding, RMSNorm, RoPE,
attention, softmax) stays f32, as transformers computes it.

Hugging Face transformers' Qwen2 is run with every ``nn.Linear`` replaced by a custom
autograd function with exactly these rules, its products formed in float64 and rounded to
f32 once (so the reference carries no summation-order error of its own):

* ``tests/fixtures/qwen2/<name>/reference_bf16_products.json`` for every tiny model: the
  per-token logprobs of each reference case (the same ``input_ids`` as reference.json).
* ``tests/fixtures/training/grads/<name>/bf16_products.json`` (the batch loss) and
  ``grads_bf16_products.safetensors`` (d loss / d parameter, f32, Hugging Face names) for
  the gradient fixtures' models and batches (see make_training_fixtures.py for the loss).

The bf16 KV cache: keys (after RoPE) and values rounded to bf16 before attention reads
them, everything else f32 (transformers' eager attention function wrapped to round its
key and value inputs):

* ``tests/fixtures/qwen2/<name>/reference_bf16_kv.json``: per-token logprobs as above.

Run from the repository root with torch, transformers and safetensors installed:
``python scripts/make_bf16_products_fixtures.py``. Deterministic on CPU.
"""

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_training_fixtures as mt  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
QWEN2 = REPO / "tests" / "fixtures" / "qwen2"
GRADS = REPO / "tests" / "fixtures" / "training" / "grads"
MODELS = ["tiny-gqa", "tiny-tied-mqa", "tiny-mha-odd", "tiny-bf16", "tiny-f16", "tiny-sharded"]
NOTE = (
    "Every nn.Linear (q/k/v/o, gate/up/down, lm_head) rounds input and weight to bf16 and "
    "sums the exact products into f32 (bias added in f32); backward rounds the output "
    "gradient to bf16 for both products; all else f32. Products formed in float64."
)


def bf16(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.bfloat16).to(torch.float64)


class RoundedLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, b):
        shape = x.shape
        xr = bf16(x.reshape(-1, shape[-1]))
        wr = bf16(w)
        ctx.save_for_backward(xr, wr)
        ctx.shape = shape
        ctx.has_bias = b is not None
        y = (xr @ wr.T).to(torch.float32)
        if b is not None:
            y = y + b
        return y.reshape(*shape[:-1], w.shape[0])

    @staticmethod
    def backward(ctx, g):
        xr, wr = ctx.saved_tensors
        g2 = g.reshape(-1, wr.shape[0])
        gr = bf16(g2)
        dx = (gr @ wr).to(torch.float32).reshape(ctx.shape)
        dw = (gr.T @ xr).to(torch.float32)
        db = g2.sum(0) if ctx.has_bias else None
        return dx, dw, db


def round_linears(model) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            module.forward = lambda x, m=module: RoundedLinear.apply(x, m.weight, m.bias)


def load(name: str):
    model = mt.load_model(name)
    round_linears(model)
    return model


def make_logprobs(name: str) -> None:
    ref = json.loads((QWEN2 / name / "reference.json").read_text())
    model = load(name)
    cases = []
    with torch.no_grad():
        for case in ref["cases"]:
            ids = torch.tensor(case["input_ids"], dtype=torch.long)
            logits = model(input_ids=ids[None], use_cache=False).logits[0]
            lp = torch.log_softmax(logits[:-1], dim=-1).gather(1, ids[1:, None])[:, 0]
            cases.append({"input_ids": case["input_ids"], "logprobs": [float(v) for v in lp]})
    out = {"note": NOTE, "cases": cases}
    (QWEN2 / name / "reference_bf16_products.json").write_text(json.dumps(out) + "\n")
    mt.log(f"qwen2/{name}: {len(cases)} cases")


def make_kv_logprobs(name: str) -> None:
    from transformers.models.qwen2 import modeling_qwen2

    eager = modeling_qwen2.eager_attention_forward

    def rounded_kv(module, query, key, value, *args, **kwargs):
        as_bf16 = lambda t: t.to(torch.bfloat16).to(t.dtype)  # noqa: E731
        return eager(module, query, as_bf16(key), as_bf16(value), *args, **kwargs)

    modeling_qwen2.eager_attention_forward = rounded_kv
    try:
        ref = json.loads((QWEN2 / name / "reference.json").read_text())
        model = mt.load_model(name)
        cases = []
        with torch.no_grad():
            for case in ref["cases"]:
                ids = torch.tensor(case["input_ids"], dtype=torch.long)
                logits = model(input_ids=ids[None], use_cache=False).logits[0]
                lp = torch.log_softmax(logits[:-1], dim=-1).gather(1, ids[1:, None])[:, 0]
                cases.append({"input_ids": case["input_ids"], "logprobs": [float(v) for v in lp]})
    finally:
        modeling_qwen2.eager_attention_forward = eager
    note = "keys (after RoPE) and values rounded to bf16 before attention; all else f32"
    (QWEN2 / name / "reference_bf16_kv.json").write_text(json.dumps({"note": note, "cases": cases}) + "\n")
    mt.log(f"qwen2/{name}: {len(cases)} cases with a bf16 KV cache")


def make_grads(name: str) -> None:
    out = GRADS / name
    lines = mt.read_jsonl(out / "batch.jsonl")
    model = load(name)
    model.zero_grad(set_to_none=True)
    loss, n = mt.batch_loss(model, lines)
    loss.backward()
    grads = {k: p.grad for k, p in mt.named_params(model).items()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    mt.save_tensors(out / "grads_bf16_products.safetensors", grads)
    ref = {"model": name, "loss": float(loss.detach()), "n_targets": n, "note": NOTE}
    (out / "bf16_products.json").write_text(json.dumps(ref, indent=1) + "\n")
    mt.log(f"grads/{name}: loss {float(loss.detach()):.6f} over {n} targets")


def main() -> None:
    torch.set_grad_enabled(True)
    for name in MODELS:
        make_logprobs(name)
        make_kv_logprobs(name)
    for case in mt.GRAD_CASES:
        make_grads(case["model"])


if __name__ == "__main__":
    main()
