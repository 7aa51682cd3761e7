#!/usr/bin/env python3
"""Reference values of LoRA adapters for artist's tests, computed by PEFT on transformers.

What it makes
-------------
``tests/fixtures/lora/<case>/``, for the tiny ``tiny-gqa`` model with PEFT adapters:

* ``adapter_config.json`` and ``adapter_model.safetensors``: the adapters as PEFT's
  ``save_pretrained`` writes them, with ``lora_B`` drawn at random (PEFT starts it at
  zero, which would hide the adapters' effect and half their gradients).
* ``expected.safetensors``: ``logits``, the logits of the packed batch below (two
  sequences, one after the other, each from position 0), ``merged_logits``, PEFT's
  ``merge_and_unload`` model on the same batch, and ``grad.<name>``: the gradient of
  ``loss`` with respect to each adapter tensor, by PEFT's name, all computed in float64
  from the float32 weights and rounded to float32 at the end; ``torch_f32_logits_err`` and
  ``torch_f32_grad_err``, how far PyTorch's own float32 run is from them (the largest
  difference over the largest value, the worst adapter tensor for gradients), where::

      loss = sum over both sequences and positions t < n-1 of
             w_t * log_softmax(logits_t)[token t+1],   w_t = 0.01 * ((t % 5) - 2)

  (a weighted sum of next-token logprobs, so every position's gradient counts with its
  own sign).

Cases
-----
* ``r4-partial``: r = 4, alpha = 8, targets q_proj, v_proj, o_proj, gate_proj and
  down_proj, so the fused q/k/v and gate/up projections hold parts without an adapter.
* ``r2-rslora``: r = 2, alpha = 3, every projection, rsLoRA's scale alpha / sqrt(r).

Run from the repository root (float32, CPU, deterministic)::

    pip install torch transformers safetensors peft && python3 scripts/make_lora_fixtures.py
"""
import json
import os

import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
from transformers import Qwen2ForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "tests/fixtures/qwen2/tiny-gqa")
OUT = os.path.join(ROOT, "tests/fixtures/lora")

SEQS = [
    [5, 17, 42, 300, 7, 99, 123, 8, 250, 31, 64],
    [288, 12, 200, 13, 77, 150, 3],
]

CASES = [
    {"name": "r4-partial", "r": 4, "alpha": 8,
     "targets": ["q_proj", "v_proj", "o_proj", "gate_proj", "down_proj"], "rslora": False},
    {"name": "r2-rslora", "r": 2, "alpha": 3, "targets": "all-linear", "rslora": True},
]


def weights(n):
    return torch.tensor([0.01 * ((t % 5) - 2) for t in range(n - 1)], dtype=torch.float32)


def run(model):
    """Logits of both sequences (concatenated by rows) and the weighted logprob loss."""
    rows, loss = [], 0.0
    for seq in SEQS:
        ids = torch.tensor([seq])
        logits = model(input_ids=ids).logits[0]
        rows.append(logits)
        lp = torch.log_softmax(logits[:-1], dim=-1).gather(1, ids[0, 1:, None])[:, 0]
        loss = loss + (weights(len(seq)) * lp).sum()
    return torch.cat(rows, 0), loss


def adapted(case, dtype):
    """tiny-gqa in `dtype` with the case's adapters, drawn from the same seed."""
    torch.manual_seed(0)
    base = Qwen2ForCausalLM.from_pretrained(MODEL, torch_dtype=torch.float32, attn_implementation="eager")
    config = LoraConfig(r=case["r"], lora_alpha=case["alpha"], target_modules=case["targets"],
                        lora_dropout=0.0, bias="none", use_rslora=case["rslora"], task_type="CAUSAL_LM")
    model = get_peft_model(base, config)
    model.eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn_like(p) * 0.5)
            elif "lora_A" in name:
                p.copy_(torch.randn_like(p) * 0.3)
    return model.to(dtype)


def rel(a, b):
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


def main():
    for case in CASES:
        out = os.path.join(OUT, case["name"])
        os.makedirs(out, exist_ok=True)
        f32 = adapted(case, torch.float32)
        f32.peft_config["default"].base_model_name_or_path = "tests/fixtures/qwen2/tiny-gqa"
        f32.save_pretrained(out)
        os.remove(os.path.join(out, "README.md"))  # PEFT's model card template
        # The values: in float64 (the f32 weights widened), rounded to f32 once at the end.
        truth = adapted(case, torch.float64)
        logits, loss = run(truth)
        loss.backward()
        expected = {"logits": logits.detach().float().contiguous(), "loss": loss.detach().float().reshape(1)}
        grads = {}
        for name, p in truth.named_parameters():
            if p.requires_grad:
                grads[name] = p.grad.detach()
                expected["grad." + name.replace(".default", "")] = p.grad.detach().float().contiguous()
        with torch.no_grad():
            expected["merged_logits"] = run(truth.merge_and_unload())[0].float().contiguous()
        # PyTorch's own float32 error against those values, for the tolerances.
        logits32, loss32 = run(f32)
        loss32.backward()
        grad_err = max(rel(p.grad, grads[n]) for n, p in f32.named_parameters() if p.requires_grad)
        expected["torch_f32_logits_err"] = torch.tensor([rel(logits32.detach(), logits)], dtype=torch.float32)
        expected["torch_f32_grad_err"] = torch.tensor([grad_err], dtype=torch.float32)
        save_file(expected, os.path.join(out, "expected.safetensors"))
        print(case["name"], "loss", float(loss.detach()), "torch f32 error: logits",
              float(expected["torch_f32_logits_err"][0]), "gradients", grad_err)
    with open(os.path.join(OUT, "sequences.json"), "w") as f:
        json.dump({"sequences": SEQS}, f)


if __name__ == "__main__":
    main()
