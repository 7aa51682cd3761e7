#!/usr/bin/env python3
"""Reads a run directory's TensorBoard event files with TensorBoard's own reader and checks
them against the run's metrics.jsonl: every numeric key of every line is a scalar at that
line's step (`train/<key>`, or `eval/<key>` for `eval_<key>`), with the value as f32.

    python3 scripts/check_tensorboard.py RUN_DIR [RUN_DIR ...]

CI runs it on the embedded demo's SFT and GRPO runs (TensorBoard fetched from PyPI into
target/, as `pip install tensorboard`). Exits non-zero, naming the first disagreement.
"""
import json
import math
import os
import struct
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def f32(x):
    return struct.unpack("f", struct.pack("f", x))[0]


def check(run):
    lines = [json.loads(l) for l in open(os.path.join(run, "metrics.jsonl")) if l.strip()]
    acc = EventAccumulator(os.path.join(run, "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    scalars = {t: {e.step: e.value for e in acc.Scalars(t)} for t in acc.Tags()["scalars"]}
    checked = 0
    for line in lines:
        step = line["step"]
        for key, value in line.items():
            if key == "step" or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            tag = "eval/" + key[len("eval_"):] if key.startswith("eval_") else "train/" + key
            got = scalars.get(tag, {}).get(step)
            want = f32(float(value))
            if got is None or not (got == want or (math.isnan(got) and math.isnan(want))):
                sys.exit(f"{run}: step {step}: {tag} is {got} in the event file, {want} in metrics.jsonl")
            checked += 1
    expected = sum(len(v) for v in scalars.values())
    if checked != expected:
        sys.exit(f"{run}: the event file holds {expected} scalars, metrics.jsonl {checked}")
    print(f"{run}: {checked} scalars over {len(lines)} lines agree")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    for run in sys.argv[1:]:
        check(run)
