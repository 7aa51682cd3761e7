#!/usr/bin/env bash
# Fetches TensorBoard (with its dependencies) from PyPI into target/ci-tensorboard and
# prints that folder, for PYTHONPATH. CI uses it to read the demo's event files with
# TensorBoard's own reader (scripts/check_tensorboard.py).
set -euo pipefail
cd "$(dirname "$0")/.."
dest="target/ci-tensorboard"
if [ ! -e "$dest/tensorboard/__init__.py" ]; then
    python3 -m pip install --quiet --root-user-action=ignore --no-compile --target "$dest" "tensorboard==2.21.0" >&2
fi
test -e "$dest/tensorboard/__init__.py"
echo "$PWD/$dest"
