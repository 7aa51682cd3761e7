#!/usr/bin/env python3
"""Reference values of the GRPO loss for artist's tests, computed by PyTorch.

What it makes
-------------
``tests/fixtures/training/grpo/``:

* ``batch.json``: a fixed batch of four rollouts for the tiny ``tiny-gqa`` model: prompt
  ids, response ids, the loss mask (0 on forced tool-output tokens), the "old" logprobs
  (the model's own, perturbed so some ratios leave the clip range), reference-model
  logprobs, and one advantage per rollout (both signs).
* ``reference.json``: for each case (an aggregation mode with its clip range, KL
  estimator, beta and temperature) the loss.
* ``grads-<case>.safetensors``: d loss / d parameter, keyed by Hugging Face name.

The loss (the same formula artist implements, written here from its definition)::

    lp_t  = log_softmax(logits / T)[token t]         (response tokens with mask 1 only)
    rho_t = exp(lp_t - old_t)
    l_t   = -min(rho_t A_i, clamp(rho_t, 1 - eps_low, 1 + eps_high) A_i) + beta KL_t
    KL_t  = exp(ref_t - lp_t) - (ref_t - lp_t) - 1   (k3),   (lp_t - ref_t)^2 / 2   (k2)
            or   lp_t - ref_t   (k1)
    loss  = sum_t w_t l_t, with
      seq_mean_token_mean:      w_t = 1 / (n_i * S)    n_i generated tokens of rollout i,
                                                       S rollouts with any
      token_mean:               w_t = 1 / N            N generated tokens in the batch
      seq_mean_token_sum_norm:  w_t = 1 / (S * L)      L a constant

GSPO (``importance_sampling_level = "sequence"``, Zheng et al., 2025) replaces each
token's ratio by its rollout's, the geometric mean of the token ratios, written as veRL
writes it: ``log rho_t = lp_t - sg(lp_t) + sg(mean_i(lp - old))``, capped at 10 (``sg``:
no gradient), so every token of rollout i has the value of its sequence ratio and the
gradient of its own logprob scaled by it. Dual-clip PPO (``clip_ratio_c = c``) bounds a
token of negative advantage: ``l_t = min(l_t, -c A_i)`` before the KL term. An entropy
bonus (``entropy_coeff = e``) makes it ``l_t - e H_t``, ``H_t = -sum p log p`` of the
token's distribution at temperature T, with its gradient.

Run from the repository root (float32, CPU, deterministic)::

    pip install torch transformers safetensors && python3 scripts/make_grpo_fixtures.py
"""
import json
import os

import torch
from safetensors.torch import save_file
from transformers import Qwen2ForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "tests/fixtures/qwen2/tiny-gqa")
OUT = os.path.join(ROOT, "tests/fixtures/training/grpo")

CASES = [
    {"name": "grpo", "aggregation": "seq_mean_token_mean", "clip_low": 0.2, "clip_high": 0.2, "beta": 0.0,
     "kl": "k3", "temperature": 1.0, "norm_length": 64},
    {"name": "dapo", "aggregation": "token_mean", "clip_low": 0.2, "clip_high": 0.28, "beta": 0.04,
     "kl": "k3", "temperature": 0.7, "norm_length": 64},
    {"name": "dr_grpo", "aggregation": "seq_mean_token_sum_norm", "clip_low": 0.2, "clip_high": 0.2, "beta": 0.1,
     "kl": "k1", "temperature": 1.0, "norm_length": 64},
    # Sequence ratios 0.97, 1.05, 1.20, 1.05 on advantages 1.3, -0.6, 0.4, -1.1: the third
    # rollout clips (1.20 > 1.15), the others do not.
    {"name": "gspo", "aggregation": "seq_mean_token_mean", "clip_low": 0.1, "clip_high": 0.15, "beta": 0.04,
     "kl": "k3", "temperature": 1.0, "norm_length": 64, "importance_sampling_level": "sequence"},
    # Dual-clip PPO: on the rollouts of negative advantage, ratios above 1.3 are capped.
    {"name": "dual_clip", "aggregation": "token_mean", "clip_low": 0.2, "clip_high": 0.2, "beta": 0.0,
     "kl": "k3", "temperature": 1.0, "norm_length": 64, "clip_ratio_c": 1.3},
    # An entropy bonus: each token's loss less 0.05 times the entropy of its distribution at
    # the temperature, differentiated.
    {"name": "entropy_bonus", "aggregation": "seq_mean_token_mean", "clip_low": 0.2, "clip_high": 0.2,
     "beta": 0.04, "kl": "k3", "temperature": 0.7, "norm_length": 64, "entropy_coeff": 0.05},
    # The k2 estimator (veRL's "mse"), with a large beta so the KL term shows.
    {"name": "k2", "aggregation": "token_mean", "clip_low": 0.2, "clip_high": 0.2, "beta": 0.5,
     "kl": "k2", "temperature": 1.0, "norm_length": 64},
]


def response_logprobs(model, prompt, ids, temperature):
    return response_logprobs_and_entropies(model, prompt, ids, temperature)[0]


def response_logprobs_and_entropies(model, prompt, ids, temperature):
    full = torch.tensor([prompt + ids])
    logits = model(full).logits[0].float() / temperature
    logp = torch.log_softmax(logits, dim=-1)
    p = len(prompt)
    rows = logp[p - 1:p - 1 + len(ids)]
    entropy = -(rows.exp() * rows).sum(dim=-1)
    return torch.stack([logp[p + j - 1, ids[j]] for j in range(len(ids))]), entropy


def make_batch(model):
    g = torch.Generator().manual_seed(11)
    specs = [([5, 17, 42], 12, 1.3), ([7, 8], 20, -0.6), ([100, 3, 9, 11], 7, 0.4), ([250, 1], 15, -1.1)]
    batch = []
    for i, (prompt, n, adv) in enumerate(specs):
        ids = torch.randint(0, 311, (n,), generator=g).tolist()
        mask = [0 if (i % 2 == 0 and 3 <= j < 7) else 1 for j in range(n)]
        with torch.no_grad():
            lp = response_logprobs(model, prompt, ids, 1.0)
        old = (lp + 0.35 * torch.randn(n, generator=g)).tolist()
        ref = (lp - 0.1 * torch.rand(n, generator=g)).tolist()
        batch.append({"prompt_ids": prompt, "ids": ids, "mask": mask, "old_logprobs": old,
                      "ref_logprobs": ref, "advantage": adv})
    return batch


def weights(batch, aggregation, norm_length):
    gen = [sum(r["mask"]) for r in batch]
    s = max(1, sum(1 for n in gen if n > 0))
    total = max(1, sum(gen))
    out = []
    for r, n in zip(batch, gen):
        if aggregation == "seq_mean_token_mean":
            w = 1.0 / (max(n, 1) * s)
        elif aggregation == "token_mean":
            w = 1.0 / total
        else:
            w = 1.0 / (s * norm_length)
        out.append([w if m == 1 else 0.0 for m in r["mask"]])
    return out


def loss_of(model, batch, case):
    w = weights(batch, case["aggregation"], case["norm_length"])
    loss = torch.zeros((), dtype=torch.float32)
    for r, wr in zip(batch, w):
        lp, entropy = response_logprobs_and_entropies(model, r["prompt_ids"], r["ids"], case["temperature"])
        m = torch.tensor(r["mask"], dtype=torch.bool)
        old = torch.tensor(r["old_logprobs"])
        ref = torch.tensor(r["ref_logprobs"])
        a = float(r["advantage"])
        if case.get("importance_sampling_level", "token") == "sequence":
            seq = (lp - old)[m].mean()
            ratio = torch.exp(torch.clamp(lp - lp.detach() + seq.detach(), max=10.0))
        else:
            ratio = torch.exp(lp - old)
        per = -torch.min(ratio * a, torch.clamp(ratio, 1 - case["clip_low"], 1 + case["clip_high"]) * a)
        if case.get("clip_ratio_c", 0.0) > 0 and a < 0:
            per = torch.min(per, torch.full_like(per, -case["clip_ratio_c"] * a))
        if case["beta"] > 0:
            if case["kl"] == "k3":
                d = ref - lp
                kl = torch.exp(d) - d - 1
            elif case["kl"] == "k2":
                kl = 0.5 * (lp - ref) ** 2
            else:
                kl = lp - ref
            per = per + case["beta"] * kl
        per = per - case.get("entropy_coeff", 0.0) * entropy
        loss = loss + (per[m] * torch.tensor(wr)[m]).sum()
    return loss


def main():
    torch.manual_seed(0)
    torch.set_num_threads(2)
    model = Qwen2ForCausalLM.from_pretrained(MODEL, dtype=torch.float32, attn_implementation="eager")
    model.train()
    batch = make_batch(model)
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "batch.json"), "w") as f:
        json.dump({"model": "tiny-gqa", "rollouts": batch}, f)
    ref = {"model": "tiny-gqa", "cases": []}
    for case in CASES:
        model.zero_grad(set_to_none=True)
        loss = loss_of(model, batch, case)
        loss.backward()
        grads = {n: p.grad.detach().contiguous() for n, p in model.named_parameters() if p.grad is not None}
        save_file(grads, os.path.join(OUT, f"grads-{case['name']}.safetensors"), metadata={"format": "pt"})
        ref["cases"].append({**case, "loss": loss.item()})
        print(case["name"], loss.item())
    with open(os.path.join(OUT, "reference.json"), "w") as f:
        json.dump(ref, f, indent=1)


if __name__ == "__main__":
    main()
