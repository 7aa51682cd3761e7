#!/usr/bin/env bash
# Fetches, here, transformers and what it needs (numpy aside: PyTorch brings it) as wheels
# for the GPU machine's Python (3.12, x86-64 Linux) into gpu-wheels/ (ignored by git; about
# 28 MB), for a GPU machine whose image has PyTorch but not transformers: the peers of the
# training-step and rollout benchmarks (scripts/bench_train_step.py, bench_rollout_hf.py)
# need it. scripts/gpu_suite.sh installs them there only when `import transformers` fails,
# and puts them after the machine's own packages (ARTIST_EXTRA_SITE), so nothing the image
# has is replaced.
#
#     bash scripts/gpu_wheels.sh        # then carry "gpu-wheels" beside the bundle's parts
set -euo pipefail
cd "$(dirname "$0")/.."
out=gpu-wheels
rm -rf "$out"
python3 -m pip download --quiet --only-binary=:all: --python-version "${PY_VERSION:-3.12}" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d "$out" "transformers==${TRANSFORMERS_VERSION:-5.24.0}"
rm -f "$out"/numpy-*.whl
du -sh "$out"
