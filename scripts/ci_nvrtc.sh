#!/usr/bin/env bash
# Fetches NVRTC (CUDA 13.0, the GPU hosts' version) from PyPI into target/ci-nvrtc and
# prints the folder holding libnvrtc, for ARTIST_CUDA_LIBS. CI uses it so that every kernel
# is compiled (for sm_80 and sm_90) on a machine with no GPU and no CUDA toolkit.
set -euo pipefail
cd "$(dirname "$0")/.."
dest="target/ci-nvrtc"
lib="$dest/nvidia/cu13/lib"
if [ ! -e "$lib/libnvrtc.so.13" ]; then
    python3 -m pip install --quiet --root-user-action=ignore --no-deps --no-compile --target "$dest" "nvidia-cuda-nvrtc==13.0.88" >&2
fi
test -e "$lib/libnvrtc.so.13"
echo "$PWD/$lib"
