#!/usr/bin/env bash
# Builds, here, everything the GPU suite runs on a lent GPU machine (which has no Rust and
# no network): the release test binaries that exercise the CUDA backend, the binaries those
# tests call, and the kernel, rollout and training-step benchmarks, stripped and xz-compressed, into gpu-bundle/
# (ignored by git; about 25 MB).
#
#     bash scripts/gpu_bundle.sh                 # then, on the GPU machine:
#     bash scripts/gpu_suite.sh                  # (the device tool: carry ["gpu-bundle"])
#
# The suite itself is scripts/gpu_suite.sh; docs/CUDA.md describes both.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
out=gpu-bundle
rm -rf "$out"
mkdir -p "$out/tests" "$out/bin"

# Each test target's executable, from cargo's JSON messages.
executables() {
    python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["target"]["name"], m["executable"])
'
}

cargo test --release --no-run --message-format=json -p artist-tensor --test cuda --test nvrtc | executables > "$out/targets.txt"
cargo test --release --no-run --message-format=json -p artist-engine --test rollout --test gpu_sampling | executables >> "$out/targets.txt"
cargo test --release --no-run --message-format=json --test cuda_model --test cli --test train_cli --test nccl | executables >> "$out/targets.txt"
cargo bench --no-run --message-format=json --bench cuda_kernels --bench rollout --bench train_step | executables > "$out/bench.txt"
while read -r name exe; do
    cp "$exe" "$out/tests/$name"
done < "$out/targets.txt"
while read -r name exe; do
    cp "$exe" "$out/$name"
done < "$out/bench.txt"
for b in generate score train; do
    cp "target/release/$b" "$out/bin/$b"
done
# Symbols and debug info out, then xz: the device tool carries 64 MiB in all, checkout included.
strip "$out"/tests/* "$out"/bin/* "$out/cuda_kernels" "$out/rollout" "$out/train_step"
xz -T0 -6 "$out"/tests/* "$out"/bin/* "$out/cuda_kernels" "$out/rollout" "$out/train_step"
# The test binaries name fixtures and the binaries above by this checkout's absolute path.
echo "$PWD" > "$out/BUILD_ROOT"
git rev-parse HEAD > "$out/COMMIT" 2>/dev/null || true
rm -f "$out/targets.txt" "$out/bench.txt"
du -sh "$out"
