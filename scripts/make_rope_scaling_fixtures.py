#!/usr/bin/env python3
"""Generate the RoPE-scaling reference fixtures used by artist's Rust tests.

What it makes
-------------
``tests/fixtures/rope_scaling/<name>.json``: a tiny Qwen2 or Qwen3 fixture of
``scripts/make_qwen2_fixtures.py`` / ``scripts/make_qwen3_fixtures.py`` (its weights and
tokenizer, named by ``base``) under a ``config.json`` that stretches RoPE as long-context
checkpoints do, and what transformers computes with it:

* ``config``              the whole config.json the test writes beside the base's weights;
* ``inv_freq``            the rotary embedding's ``inv_freq`` buffer (float32, one per
                          pair of dimensions) and ``attention_scaling`` (the factor cos
                          and sin are multiplied by), as transformers initialises them;
* ``cases``               the base fixture's inputs (the same four sequences, the longest
                          88 tokens) with their next-token logprobs and last logits in f32.

Cases:

* ``qwen2-yarn``          tiny-gqa with the block Qwen2.5's model cards give for 128k
                          contexts, in the classic form: ``"rope_scaling": {"type": "yarn",
                          "factor": 4.0, "original_max_position_embeddings": 32}`` (32
                          here, so the inputs run past it; theta 100, so the ramp between
                          extrapolated and interpolated frequencies falls inside the 16
                          pairs).
* ``qwen3-yarn-mscale``   tiny-qwen3 with transformers 5's ``rope_parameters``: YaRN with
                          every optional key (``beta_fast`` 8, ``beta_slow`` 2, ``mscale``,
                          ``mscale_all_dim``, ``truncate: false``), factor 8.
* ``qwen2-linear``        tiny-gqa with position interpolation (``"type": "linear",
                          "factor": 2.0``).

Each case's logprobs are checked to move by more than 0.05 from the base's (the scaling is
seen), and transformers' ``inv_freq`` to equal an independent float64 evaluation of the
formulas of the YaRN paper (Peng et al., 2023) within 1e-6 relative.

How to run
----------
From the repository root, in the environment of make_qwen2_fixtures.py::

    python3 scripts/make_rope_scaling_fixtures.py

Versions it was run with (the committed fixtures): Python 3.11.7, torch 2.15.0 (PyPI
wheel 2.15.0+cu132, run on CPU), transformers 5.25.0, tokenizers 0.23.3.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import make_qwen2_fixtures as q2  # noqa: E402  (sets HF offline, one thread)

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

FIXTURES = q2.REPO / "tests" / "fixtures"
OUT_DIR = FIXTURES / "rope_scaling"

CASES = [
    dict(
        name="qwen2-yarn",
        base="qwen2/tiny-gqa",
        set={
            "rope_theta": 100.0,
            "rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32},
        },
    ),
    dict(
        name="qwen3-yarn-mscale",
        base="qwen3/tiny-qwen3",
        set={
            "rope_parameters": {
                "rope_type": "yarn",
                "rope_theta": 100.0,
                "factor": 8.0,
                "original_max_position_embeddings": 16,
                "beta_fast": 8,
                "beta_slow": 2,
                "mscale": 1.0,
                "mscale_all_dim": 0.5,
                "truncate": False,
            },
        },
    ),
    dict(
        name="qwen2-linear",
        base="qwen2/tiny-gqa",
        set={"rope_scaling": {"type": "linear", "factor": 2.0}},
    ),
]


def expected_frequencies(params: dict, theta: float, head_dim: int, max_pos: int) -> tuple[list[float], float]:
    """RoPE's inverse frequencies and cos/sin factor in float64, from the papers' formulas
    (position interpolation: theta^(-2i/d) / s; YaRN: a linear ramp in the dimension
    between interpolation and extrapolation over the wavelengths that fit beta_slow and
    beta_fast rotations in the original context, and 0.1 ln(s) + 1 on cos and sin)."""
    half = head_dim // 2
    base = [theta ** (-2 * i / head_dim) for i in range(half)]
    kind = params.get("rope_type") or params.get("type")
    s = params["factor"]
    if kind == "linear":
        return [f / s for f in base], 1.0
    assert kind == "yarn"
    orig = params.get("original_max_position_embeddings", max_pos)

    def mscale(scale, m=1.0):
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    if params.get("attention_factor") is not None:
        attn = params["attention_factor"]
    elif params.get("mscale") and params.get("mscale_all_dim"):
        attn = mscale(s, params["mscale"]) / mscale(s, params["mscale_all_dim"])
    else:
        attn = mscale(s)

    # The dimension pair whose wavelength fits `r` rotations in the original context.
    def dim_of(r):
        return head_dim * math.log(orig / (r * 2 * math.pi)) / (2 * math.log(theta))

    lo, hi = dim_of(params.get("beta_fast") or 32), dim_of(params.get("beta_slow") or 1)
    if params.get("truncate", True):
        lo, hi = math.floor(lo), math.ceil(hi)
    lo, hi = max(lo, 0), min(hi, head_dim - 1)
    if lo == hi:
        hi += 0.001
    out = []
    for i, f in enumerate(base):
        ramp = min(max((i - lo) / (hi - lo), 0.0), 1.0)  # 0: extrapolate, 1: interpolate
        out.append(f * (1 - ramp) + f / s * ramp)
    return out, attn


def make_case(case: dict) -> dict:
    base_dir = FIXTURES / case["base"]
    base_ref = json.loads((base_dir / "reference.json").read_text())
    config = json.loads((base_dir / "config.json").read_text())
    for k in ("rope_scaling", "rope_parameters"):
        config.pop(k, None)
    config.update(case["set"])
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for f in base_dir.iterdir():
            if f.name not in ("config.json",) and not f.name.startswith("reference"):
                shutil.copy(f, tmp / f.name)
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        model = AutoModelForCausalLM.from_pretrained(str(tmp), dtype=torch.float32, attn_implementation="eager")
        model.eval()
    rotary = model.model.rotary_emb
    inv_freq = rotary.inv_freq.tolist()
    scaling = float(rotary.attention_scaling)
    params = case["set"].get("rope_parameters") or case["set"]["rope_scaling"]
    theta = params.get("rope_theta") or config["rope_theta"]
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    want, want_scaling = expected_frequencies(params, theta, head_dim, config["max_position_embeddings"])
    for got, w in zip(inv_freq, want, strict=True):
        assert abs(got - w) <= 1e-6 * w, (case["name"], inv_freq, want)
    assert abs(scaling - want_scaling) <= 1e-12, (scaling, want_scaling)

    cases = [q2.compute_case(model, c["input_ids"]) for c in base_ref["cases"]]
    for c in cases:
        c.pop("_min_top6_gap")
    moved = max(
        abs(a - b) for c, b0 in zip(cases, base_ref["cases"]) for a, b in zip(c["logprobs"], b0["logprobs"])
    )
    assert moved > 0.05, f"{case['name']}: the scaling moved the logprobs by only {moved}"
    q2.log(f"{case['name']}: logprobs moved up to {moved:.3f} from {case['base']}; attention_scaling {scaling}")
    return {
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "base": case["base"],
        "config": config,
        "inv_freq": inv_freq,
        "attention_scaling": scaling,
        "cases": cases,
    }


def main() -> None:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for case in CASES:
        out = OUT_DIR / f"{case['name']}.json"
        out.write_text(json.dumps(make_case(case), indent=1) + "\n")
        q2.log(f"wrote {out.relative_to(q2.REPO)}")


if __name__ == "__main__":
    main()
