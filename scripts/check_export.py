#!/usr/bin/env python3
"""Checks that a model directory written by `train` loads in Hugging Face transformers and
scores a token sequence as artist's own `score` does.

    python scripts/check_export.py RUN_DIR/final [--score-bin target/release/score] [--ids 1,2,3]

Loads the directory with ``AutoModelForCausalLM`` (float32, eager attention), computes
``log p(token_i | tokens_<i)`` for the ids, runs ``score --json`` on the same directory and
ids, and prints the largest difference. Exits non-zero when it exceeds 1e-4. A LoRA run's
``final/`` (base weights and PEFT's adapter files) loads through transformers' PEFT
integration (``pip install peft``), which applies the adapters as artist does.
"""

import argparse
import json
import subprocess
import sys

import torch
from transformers import AutoModelForCausalLM


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("--score-bin", default="target/release/score")
    ap.add_argument("--ids", default="19,137,256,180,158,28,50,253,28,121")
    args = ap.parse_args()

    ids = [int(x) for x in args.ids.split(",")]
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()
    lp = torch.log_softmax(logits, -1)
    theirs = [lp[i - 1, ids[i]].item() for i in range(1, len(ids))]

    out = subprocess.run(
        [args.score_bin, "--model", args.model_dir, "--token-ids", args.ids, "--json"],
        check=True, capture_output=True, text=True,
    )
    ours = json.loads(out.stdout)["logprobs"]
    worst = max(abs(a - b) for a, b in zip(ours, theirs))
    print(json.dumps({"model_dir": args.model_dir, "tokens": len(ids), "max_abs_diff": worst}))
    return 0 if worst <= 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
