#!/usr/bin/env python3
"""Generate the training reference fixtures used by artist's autograd and SFT tests.

What it makes
-------------
Everything goes under ``tests/fixtures/training/``. The models are the tiny Qwen2
fixtures made by ``scripts/make_qwen2_fixtures.py`` (``tests/fixtures/qwen2/<name>/``),
loaded with ``Qwen2ForCausalLM.from_pretrained(dir, dtype=float32,
attn_implementation="eager")``; nothing here changes or copies their weights.

Batch loss (shared definition with the Rust side). A data line is the JSON object
``{"input_ids": [...], "loss_mask": [...]}`` (equal lengths). ``loss_mask[i] == 1`` makes
token ``i`` a target predicted from ``tokens[:i]``; ``loss_mask[0]`` is ignored (always
written as 0). Every sequence is run on its own (batch of 1, no padding, no attention
mask, so plain causal attention) and the loss of a batch is::

    sum over sequences, over i >= 1 with loss_mask[i] == 1, of
        -log_softmax(logits[i - 1])[input_ids[i]]
    / (number of such targets in the whole batch)

i.e. per-token NLLs are summed across sequences and divided once by the batch's target
count (not a mean of per-sequence means). Everything is float32.

1. ``grads/<model>/`` for ``tiny-gqa``, ``tiny-tied-mqa`` and ``tiny-mha-odd``:

   * ``batch.jsonl``        4 sequences of lengths 9, 23, 40, 57.
   * ``reference.json``     ``{"model", "loss", "n_targets", "note"}``.
   * ``grads.safetensors``  d loss / d parameter for every parameter, float32, keyed by
                            the Hugging Face parameter name. Tied models have no
                            ``lm_head.weight`` entry: the ``model.embed_tokens.weight``
                            gradient is the sum of the embedding and output-projection
                            contributions (the shared tensor's gradient in torch).

2. ``sft/<case>/``: ten optimiser steps of full-batch SFT.

   * ``data.jsonl``         the dataset; every step uses all of it, in file order, as
                            one batch (batch loss as above).
   * ``reference.json``     ``{"model", "hparams", "losses", "grad_norms", "lrs"}``;
                            ``model`` names the source directory under
                            ``tests/fixtures/qwen2/``. ``losses[k]``, ``grad_norms[k]``
                            and ``lrs[k]`` belong to step k: the loss before that step's
                            update, the total L2 norm of all gradients before clipping,
                            and the learning rate the step used.
   * ``final.safetensors``  every parameter after the last step, float32, keyed by the
                            Hugging Face name (tied: only ``model.embed_tokens.weight``).

   Cases:

   * ``gqa-cosine``   tiny-gqa, 6 lines (lengths 12, 20, 31, 8, 44, 17); lr 3e-3,
                      betas (0.9, 0.95), eps 1e-8, weight_decay 0.1, grad_clip 1.0,
                      warmup 3, cosine (``get_cosine_schedule_with_warmup(opt, 3, 10)``).
   * ``tied-linear``  tiny-tied-mqa, 5 lines (lengths 15, 9, 33, 26, 50); lr 1e-3,
                      betas (0.9, 0.999), eps 1e-6, weight_decay 0.01, no clipping,
                      warmup 2, linear (``get_linear_schedule_with_warmup(opt, 2, 10)``).

   One step: zero the gradients; batch loss; backward; ``grad_norm`` = total L2 norm
   of all gradients (``clip_grad_norm_(params, grad_clip)``'s return value when
   clipping, ``get_total_norm`` otherwise); record ``param_groups[0]["lr"]``;
   ``opt.step()``; ``sched.step()``. The optimiser is ``torch.optim.AdamW(
   model.parameters(), lr, betas, eps, weight_decay, foreach=False)``: one parameter
   group, decoupled weight decay on every parameter (norms and biases included), the
   shared tensor of a tied model updated once. For reference, torch's AdamW step t
   (t = 1, 2, ...) with learning rate lr_t is::

       p  <- p * (1 - lr_t * weight_decay)
       m  <- beta1 * m + (1 - beta1) * g
       v  <- beta2 * v + (1 - beta2) * g * g
       p  <- p - lr_t / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

   and the schedules multiply the base lr at step s (0-based) by ``s / warmup`` while
   ``s < warmup``, then by ``0.5 * (1 + cos(pi * q))`` (cosine) or ``1 - q`` (linear),
   with ``q = (s - warmup) / (steps - warmup)``. Step 0 therefore runs with lr 0: it
   changes no weight but still advances AdamW's moments and its step count t.

Data lines: token ids uniform in ``[0, vocab_size)`` (vocab_size from the model's
config.json), loss-mask bits 1 with probability 0.6, index 0 forced to 0; a line whose
mask comes out with no target is redrawn. Each file has its own seeded
``torch.Generator`` (seeds in ``GRAD_CASES`` / ``SFT_CASES`` below).

Self-checks run at the end, from the files on disk: every ``final.safetensors`` is
loaded into a freshly loaded model and must equal the trained weights exactly and give
the same loss, and the whole SFT run is repeated and must give bit-identical losses,
grad norms and weights. For every ``grads.safetensors``: a plain re-implementation of
the Qwen2 forward pass in float64 (reads only config.json and the safetensors; the
transformers model is not float64 throughout, see ``plain_qwen2_logits``) gives the loss
within 1e-5 relative; a central finite difference of its loss along a random unit-norm
direction d (eps 1e-4) matches its own float64 autograd ``<g64, d>`` within 1e-7 and the
fixture's ``<grads, d>`` within 1e-5 of ``|grads|`` (all printed); and ``|grads - g64|
/ |g64| <= 1e-5``. The fixture's ``<grads, d>`` is compared on the scale of ``|grads|``,
not of ``|<grads, d>|``: a random direction is nearly orthogonal to the gradient
(``|<grads, d>| ~ |grads| / sqrt(#params)``), so the float32 rounding in the gradient
(relative L2 error 2e-6 to 4e-6 here) shows up as about 1e-5 of ``<grads, d>`` itself.

How to run
----------
From the repository root, in the Python environment of ``make_qwen2_fixtures.py``::

    pip install torch transformers safetensors && python3 scripts/make_training_fixtures.py

It runs on the CPU with two threads and takes a few seconds. Output is deterministic
for a given set of library versions (re-running rewrites the same bytes).

Versions it was run with (the committed fixtures): Python 3.11.7, torch 2.15.0 (PyPI
wheel 2.15.0+cu132, run on CPU), transformers 5.24.0, safetensors 0.8.0.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

torch.set_num_threads(2)
torch.use_deterministic_algorithms(True)

import safetensors  # noqa: E402
import transformers  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import Qwen2ForCausalLM  # noqa: E402
from transformers import get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
MODELS_DIR = REPO / "tests" / "fixtures" / "qwen2"
OUT_DIR = REPO / "tests" / "fixtures" / "training"

MASK_P = 0.6

GRAD_CASES = [
    dict(model="tiny-gqa", seed=7101, lengths=[9, 23, 40, 57]),
    dict(model="tiny-tied-mqa", seed=7102, lengths=[9, 23, 40, 57]),
    dict(model="tiny-mha-odd", seed=7103, lengths=[9, 23, 40, 57]),
]

SFT_CASES = [
    dict(
        name="gqa-cosine",
        model="tiny-gqa",
        seed=7201,
        lengths=[12, 20, 31, 8, 44, 17],
        hparams=dict(
            steps=10, lr=3e-3, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1,
            grad_clip=1.0, warmup_steps=3, schedule="cosine",
        ),
    ),
    dict(
        name="tied-linear",
        model="tiny-tied-mqa",
        seed=7202,
        lengths=[15, 9, 33, 26, 50],
        hparams=dict(
            steps=10, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-6, weight_decay=0.01,
            grad_clip=0.0, warmup_steps=2, schedule="linear",
        ),
    ),
]

LOSS_NOTE = (
    "loss = sum over sequences, over i >= 1 with loss_mask[i] == 1, of "
    "-log_softmax(logits[i-1])[input_ids[i]], divided by n_targets (the batch's total "
    "target count); each sequence forwarded alone (batch of 1, no padding, causal "
    "attention only); float32. grads.safetensors holds d loss / d parameter keyed by "
    "Hugging Face name; for tied embeddings model.embed_tokens.weight carries the "
    "lm_head contribution too and there is no lm_head.weight entry."
)

FD_EPS = 1e-4
FD_RTOL = 1e-5


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------
# Models, data, loss
# ---------------------------------------------------------------------------------------
def load_model(name: str) -> Qwen2ForCausalLM:
    m = Qwen2ForCausalLM.from_pretrained(
        str(MODELS_DIR / name), dtype=torch.float32, attn_implementation="eager"
    )
    m.eval()  # attention_dropout is 0, so train/eval behave the same; eval to be explicit
    assert m.config._attn_implementation == "eager"
    assert all(p.dtype == torch.float32 for p in m.parameters())
    names = [n for n, _ in m.named_parameters()]
    assert ("lm_head.weight" in names) == (not m.config.tie_word_embeddings), names
    if m.config.tie_word_embeddings:
        assert m.lm_head.weight is m.model.embed_tokens.weight
    return m


def vocab_size_of(name: str) -> int:
    cfg = json.loads((MODELS_DIR / name / "config.json").read_text())
    return int(cfg["vocab_size"])


def max_positions_of(name: str) -> int:
    cfg = json.loads((MODELS_DIR / name / "config.json").read_text())
    return int(cfg["max_position_embeddings"])


def make_lines(vocab: int, lengths: list[int], seed: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    lines = []
    for n in lengths:
        ids = torch.randint(0, vocab, (n,), generator=g)
        while True:
            mask = (torch.rand(n, generator=g) < MASK_P).to(torch.long)
            mask[0] = 0
            if int(mask.sum()) > 0:
                break
        lines.append({"input_ids": [int(x) for x in ids], "loss_mask": [int(x) for x in mask]})
    return lines


def write_jsonl(path: Path, lines: list[dict]) -> None:
    path.write_text("".join(json.dumps(obj) + "\n" for obj in lines))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(s) for s in path.read_text().splitlines() if s.strip()]


def batch_loss(model, lines: list[dict]) -> tuple[torch.Tensor, int]:
    """Summed masked NLL over all sequences / total target count (see module docstring)."""
    total = None
    count = 0
    for line in lines:
        ids = torch.tensor(line["input_ids"], dtype=torch.long)
        mask = torch.tensor(line["loss_mask"], dtype=torch.bool)
        assert ids.shape == mask.shape
        logits = model(input_ids=ids[None], use_cache=False).logits[0]
        logp = torch.log_softmax(logits[:-1], dim=-1)
        nll = -logp.gather(1, ids[1:, None])[:, 0]
        sel = mask[1:]
        s = nll[sel].sum()
        total = s if total is None else total + s
        count += int(sel.sum())
    assert count > 0
    return total / count, count


def named_params(model) -> dict[str, torch.nn.Parameter]:
    return dict(model.named_parameters())


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    out = {k: v.detach().to(torch.float32).contiguous().clone() for k, v in tensors.items()}
    save_file(out, str(path), metadata={"format": "pt"})


# ---------------------------------------------------------------------------------------
# 1. Gradient fixtures
# ---------------------------------------------------------------------------------------
def make_grads(case: dict) -> None:
    name = case["model"]
    out = OUT_DIR / "grads" / name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    assert max(case["lengths"]) <= max_positions_of(name)

    lines = make_lines(vocab_size_of(name), case["lengths"], case["seed"])
    write_jsonl(out / "batch.jsonl", lines)

    model = load_model(name)
    model.zero_grad(set_to_none=True)
    loss, n = batch_loss(model, lines)
    loss.backward()
    grads = {k: p.grad for k, p in named_params(model).items()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    save_tensors(out / "grads.safetensors", grads)
    ref = {"model": name, "loss": float(loss.detach()), "n_targets": n, "note": LOSS_NOTE}
    (out / "reference.json").write_text(json.dumps(ref, indent=1) + "\n")
    log(f"grads/{name}: loss {float(loss.detach()):.6f} over {n} targets, {len(grads)} tensors")


# ---------------------------------------------------------------------------------------
# 2. SFT fixtures
# ---------------------------------------------------------------------------------------
def run_sft(model, lines: list[dict], hp: dict) -> dict:
    params = list(model.parameters())  # a tied model's shared tensor appears once
    opt = torch.optim.AdamW(
        params, lr=hp["lr"], betas=(hp["beta1"], hp["beta2"]), eps=hp["eps"],
        weight_decay=hp["weight_decay"], foreach=False,
    )
    assert len(opt.param_groups) == 1
    if hp["schedule"] == "cosine":
        sched = get_cosine_schedule_with_warmup(opt, num_warmup_steps=hp["warmup_steps"], num_training_steps=hp["steps"])
    elif hp["schedule"] == "linear":
        sched = get_linear_schedule_with_warmup(opt, hp["warmup_steps"], hp["steps"])
    else:
        raise ValueError(hp["schedule"])

    losses, norms, lrs = [], [], []
    for _ in range(hp["steps"]):
        opt.zero_grad(set_to_none=True)
        loss, _n = batch_loss(model, lines)
        loss.backward()
        if hp["grad_clip"] > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, hp["grad_clip"], foreach=False)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params], foreach=False)
        lrs.append(float(opt.param_groups[0]["lr"]))
        losses.append(float(loss.detach()))
        norms.append(float(norm))
        opt.step()
        sched.step()
    return {"losses": losses, "grad_norms": norms, "lrs": lrs}


def make_sft(case: dict) -> None:
    out = OUT_DIR / "sft" / case["name"]
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    name = case["model"]
    assert max(case["lengths"]) <= max_positions_of(name)

    lines = make_lines(vocab_size_of(name), case["lengths"], case["seed"])
    write_jsonl(out / "data.jsonl", lines)

    model = load_model(name)
    rec = run_sft(model, lines, case["hparams"])
    save_tensors(out / "final.safetensors", named_params(model))
    ref = {"model": name, "hparams": case["hparams"], **rec}
    (out / "reference.json").write_text(json.dumps(ref, indent=1) + "\n")
    log(f"sft/{case['name']}: losses {[round(x, 5) for x in rec['losses']]}")
    log(f"sft/{case['name']}: lrs    {[float(f'{x:.6g}') for x in rec['lrs']]}")


# ---------------------------------------------------------------------------------------
# Self-checks (from the files on disk)
# ---------------------------------------------------------------------------------------
def check_sft(case: dict) -> None:
    out = OUT_DIR / "sft" / case["name"]
    ref = json.loads((out / "reference.json").read_text())
    lines = read_jsonl(out / "data.jsonl")
    final = load_file(str(out / "final.safetensors"))

    # Training is deterministic: a second run gives the same numbers and weights bit for bit.
    model = load_model(ref["model"])
    rec = run_sft(model, lines, ref["hparams"])
    for k in ("losses", "grad_norms", "lrs"):
        assert rec[k] == ref[k], (case["name"], k, rec[k], ref[k])
    trained = named_params(model)
    assert sorted(trained) == sorted(final), (sorted(trained), sorted(final))
    for k, p in trained.items():
        assert torch.equal(p.detach(), final[k]), (case["name"], k)

    # final.safetensors loaded into a fresh model reproduces the trained model.
    fresh = load_model(ref["model"])
    missing, unexpected = fresh.load_state_dict(final, strict=False)
    assert not unexpected, unexpected
    assert set(missing) <= {"lm_head.weight"} and (not missing or fresh.config.tie_word_embeddings), missing
    if fresh.config.tie_word_embeddings:
        assert fresh.lm_head.weight is fresh.model.embed_tokens.weight
    with torch.no_grad():
        l_trained, _ = batch_loss(model, lines)
        l_fresh, _ = batch_loss(fresh, lines)
    assert float(l_trained) == float(l_fresh), (float(l_trained), float(l_fresh))
    log(f"check sft/{case['name']}: rerun identical; reloaded final loss {float(l_fresh):.6f} == trained")


def plain_qwen2_logits(cfg: dict, w: dict[str, torch.Tensor], ids: list[int]) -> torch.Tensor:
    """Textbook Qwen2 forward pass (causal attention, no cache) in the dtype of ``w``.

    The float64 reference for the finite-difference check. transformers' modelling
    code is not used there because it is not float64 throughout even on a float64
    model: RMSNorm and the eager attention softmax round through float32, which puts
    float32-sized noise into a finite difference.
    """
    theta = cfg["rope_parameters"]["rope_theta"] if "rope_parameters" in cfg else cfg["rope_theta"]
    hid, nh, nkv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    d = hid // nh
    eps = cfg["rms_norm_eps"]
    n = len(ids)
    dt = w["model.embed_tokens.weight"].dtype

    def rms(x, wt):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * wt

    def rot_half(x):
        return torch.cat([-x[..., d // 2:], x[..., : d // 2]], dim=-1)

    inv_freq = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=dt) / d))
    freqs = torch.arange(n, dtype=dt)[:, None] * inv_freq[None, :]
    emb = torch.cat([freqs, freqs], dim=-1)
    cos, sin = emb.cos(), emb.sin()
    mask = torch.full((n, n), float("-inf"), dtype=dt).triu(1)

    x = w["model.embed_tokens.weight"][torch.tensor(ids)]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = rms(x, w[p + "input_layernorm.weight"])
        q = (h @ w[p + "self_attn.q_proj.weight"].T + w[p + "self_attn.q_proj.bias"]).view(n, nh, d).transpose(0, 1)
        k = (h @ w[p + "self_attn.k_proj.weight"].T + w[p + "self_attn.k_proj.bias"]).view(n, nkv, d).transpose(0, 1)
        v = (h @ w[p + "self_attn.v_proj.weight"].T + w[p + "self_attn.v_proj.bias"]).view(n, nkv, d).transpose(0, 1)
        q = q * cos + rot_half(q) * sin
        k = k * cos + rot_half(k) * sin
        k = k.repeat_interleave(nh // nkv, dim=0)  # query head j uses KV head j // (nh / nkv)
        v = v.repeat_interleave(nh // nkv, dim=0)
        att = torch.softmax(q @ k.transpose(1, 2) / d**0.5 + mask, dim=-1)
        o = (att @ v).transpose(0, 1).reshape(n, nh * d)
        x = x + o @ w[p + "self_attn.o_proj.weight"].T
        h = rms(x, w[p + "post_attention_layernorm.weight"])
        g = h @ w[p + "mlp.gate_proj.weight"].T
        u = h @ w[p + "mlp.up_proj.weight"].T
        x = x + (torch.nn.functional.silu(g) * u) @ w[p + "mlp.down_proj.weight"].T
    x = rms(x, w["model.norm.weight"])
    head = w["model.embed_tokens.weight"] if cfg.get("tie_word_embeddings") else w["lm_head.weight"]
    return x @ head.T


def plain_batch_loss(cfg: dict, w: dict[str, torch.Tensor], lines: list[dict]) -> torch.Tensor:
    total = torch.zeros((), dtype=torch.float64)
    count = 0
    for line in lines:
        ids = torch.tensor(line["input_ids"], dtype=torch.long)
        mask = torch.tensor(line["loss_mask"], dtype=torch.bool)[1:]
        logp = torch.log_softmax(plain_qwen2_logits(cfg, w, line["input_ids"])[:-1], dim=-1)
        total = total - logp.gather(1, ids[1:, None])[:, 0][mask].sum()
        count += int(mask.sum())
    return total / count


def check_grads(case: dict) -> None:
    name = case["model"]
    out = OUT_DIR / "grads" / name
    ref = json.loads((out / "reference.json").read_text())
    lines = read_jsonl(out / "batch.jsonl")
    grads = {k: v.double() for k, v in load_file(str(out / "grads.safetensors")).items()}
    cfg = json.loads((MODELS_DIR / name / "config.json").read_text())
    w = {k: v.double() for k, v in load_file(str(MODELS_DIR / name / "model.safetensors")).items()}
    assert sorted(w) == sorted(grads), (sorted(w), sorted(grads))

    def norm(ts) -> float:
        return math.sqrt(sum(float((t * t).sum()) for t in ts))

    def dot(a, b) -> float:
        return sum(float((a[k] * b[k]).sum()) for k in sorted(a))

    # float64 loss and gradient of the plain forward pass.
    wg = {k: v.clone().requires_grad_() for k, v in w.items()}
    l64 = plain_batch_loss(cfg, wg, lines)
    l64.backward()
    g64 = {k: v.grad for k, v in wg.items()}
    l64 = float(l64.detach())
    assert abs(l64 - ref["loss"]) <= 1e-5 * abs(ref["loss"]), (l64, ref["loss"])

    # Random direction of unit L2 norm over all parameters (so eps is the step length).
    g = torch.Generator().manual_seed(case["seed"] + 1000)
    d = {k: torch.randn(w[k].shape, generator=g, dtype=torch.float64) for k in sorted(w)}
    scale = norm(d.values())
    d = {k: v / scale for k, v in d.items()}
    with torch.no_grad():
        plus = float(plain_batch_loss(cfg, {k: w[k] + FD_EPS * d[k] for k in w}, lines))
        minus = float(plain_batch_loss(cfg, {k: w[k] - FD_EPS * d[k] for k in w}, lines))
    fd = (plus - minus) / (2 * FD_EPS)
    dot_fixture = dot(grads, d)
    dot_f64 = dot(g64, d)
    gnorm = norm(grads.values())
    rel = abs(fd - dot_fixture) / abs(fd)
    rel_scaled = abs(fd - dot_fixture) / gnorm  # |d| = 1
    rel_f64 = abs(fd - dot_f64) / abs(fd)
    rel_grad = norm(grads[k] - g64[k] for k in w) / norm(g64.values())
    log(
        f"check grads/{name}: loss f64 {l64:.8f} vs fixture {ref['loss']:.8f}\n"
        f"    directional derivative: finite difference {fd:.10g}, <grads, d> {dot_fixture:.10g} "
        f"(rel diff {rel:.2e}; / |grads| {rel_scaled:.2e}), f64 autograd {dot_f64:.10g} (rel diff {rel_f64:.1e})\n"
        f"    |grads - f64 autograd| / |f64 autograd| = {rel_grad:.2e}, |grads| = {gnorm:.6g}"
    )
    assert rel_f64 <= 1e-7, (name, fd, dot_f64)
    assert rel_scaled <= FD_RTOL, (name, fd, dot_fixture, rel_scaled)
    assert rel_grad <= FD_RTOL, (name, rel_grad)


def main() -> None:
    for case in GRAD_CASES:
        make_grads(case)
    for case in SFT_CASES:
        make_sft(case)
    for case in SFT_CASES:
        check_sft(case)
    for case in GRAD_CASES:
        check_grads(case)
    total = sum(f.stat().st_size for f in OUT_DIR.rglob("*") if f.is_file())
    log(f"total size of {OUT_DIR.relative_to(REPO)}: {total} bytes")
    log(
        f"versions: python {sys.version.split()[0]}, torch {torch.__version__}, transformers "
        f"{transformers.__version__}, safetensors {safetensors.__version__}"
    )


if __name__ == "__main__":
    main()
