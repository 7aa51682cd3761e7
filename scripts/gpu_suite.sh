#!/usr/bin/env bash
# The GPU suite, on a machine with an NVIDIA GPU and no Rust: runs what
# scripts/gpu_bundle.sh built (carried as gpu-bundle/).
#
#     bash scripts/gpu_suite.sh [all|tests|bench]      # default all: steps 1-7; tests: 1-5; bench: 1, 6, 7
#
# Logs and figures are written to a scratch folder and packed after every step into
# $OUT/results.tar.gz (gpu-results/ without $OUT), beside summary.txt and bench_cuda.json:
# three files, since the device tool returns at most eight, two folders deep, and whatever
# is there when a command is stopped at its limit. Each step has a time limit of its own
# (STEP_TIMEOUT, default 240 s), so one hung step cannot take the whole call, and the whole
# run one too (SUITE_TIMEOUT, default 540 s, inside the device tool's 600 s per command):
# a step gets at most what is left of it, and steps past it are skipped and listed, so the
# summary is always written.
#
#   1. which GPU, driver and CUDA libraries the binaries find;
#   2. every kernel compiled by this machine's NVRTC (tests/nvrtc.rs);
#   3. every CUDA op against the CPU backend (crates/tensor/tests/cuda.rs);
#   4. whole models against transformers and PyTorch, and training steps (tests/cuda_model.rs),
#      bf16 attention in training again on wgmma, forward and backward (ARTIST_ATTN_WGMMA=1);
#   5. the binaries with --device cuda (generate, score, three SFT steps and two GRPO steps
#      through train, each against the CPU run);
#      NCCL: every collective, a one-rank SFT run against the in-process one (tests/nccl.rs);
#      rollouts on the GPU against the CPU, and decode steps as CUDA graphs against eager
#      ones (crates/engine/tests/rollout.rs); the GPU sampler's draws against the host
#      sampler's, to the token (crates/engine/tests/gpu_sampling.rs);
#   6. the kernel benchmark beside PyTorch (scripts/bench_cuda.py), a markdown table (on a
#      Hopper GPU it times attention on warpgroup MMA too, attention_{fwd,bwd}_wgmma_bf16), and
#      attention forward and backward again off the tensor cores (ARTIST_ATTN_MMA=0), and the
#      memory-bound kernels again without whole-vector accesses (ARTIST_VEC=0);
#   7. a training step (forward, backward, AdamW) of a Qwen2.5-1.5B shape with bf16 products
#      and attention beside PyTorch under autocast (scripts/bench_train_step.py); then
#      GRPO-shaped rollouts and batch-1 decode of a Qwen2.5-1.5B shape beside transformers'
#      generate (benches/rollout.rs, scripts/bench_rollout_hf.py), then the rollouts again
#      with bf16 products and a bf16 KV cache (--matmul-dtype bf16 --kv-dtype bf16), and
#      those with one warp per query head in decode attention (ARTIST_ATTN_GROUP=0); the
#      training step and the bf16 rollouts again with rank-16 LoRA adapters.
set -uo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
phase="${1:-all}"
case "$phase" in all | tests | bench) ;; *) echo "usage: gpu_suite.sh [all|tests|bench]"; exit 2 ;; esac
dest="${OUT:-$root/gpu-results}"
mkdir -p "$dest"
out="$(mktemp -d)" # every log; packed into $dest after each step
b="$root/gpu-bundle"
test -d "$b" || { echo "no gpu-bundle/: run scripts/gpu_bundle.sh on the build machine and carry it"; exit 2; }
status=0
limit="${STEP_TIMEOUT:-240}"
deadline=$((SECONDS + ${SUITE_TIMEOUT:-540} - 15)) # 15 s kept for the summary and packing
pack() {
    tar -czf "$dest/results.tar.gz.tmp" -C "$out" --exclude kernel-cache --exclude criterion . 2>/dev/null &&
        mv "$dest/results.tar.gz.tmp" "$dest/results.tar.gz"
    cp "$out/bench_cuda.json" "$dest/" 2>/dev/null || true
}
step() { pack; echo; echo "== $*"; }
wants() { [ "$phase" = all ] || [ "$phase" = "$1" ]; }

step "device"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$out/device.txt"
echo "commit $(cat "$b/COMMIT" 2>/dev/null)" | tee -a "$out/device.txt"
ldconfig -p | grep -E "libcuda\.so|libnvrtc|libcublas|libnccl" | tee -a "$out/device.txt"
ls -d /opt/*/.venv/lib/python3*/site-packages/nvidia/*/lib /usr/local/cuda/lib64 2>/dev/null | tee -a "$out/device.txt"
# The benchmarks' peers need PyTorch and transformers. Wheels carried as gpu-wheels/
# (scripts/gpu_wheels.sh) are installed only when transformers is missing, and searched
# after the machine's own packages.
peers() {
    python3 -c 'import os, sys
if os.environ.get("ARTIST_EXTRA_SITE"): sys.path.append(os.environ["ARTIST_EXTRA_SITE"])
import torch, transformers
print("torch", torch.__version__, "transformers", transformers.__version__)'
}
if ! peers >> "$out/device.txt" 2>&1 && [ -d gpu-wheels ]; then
    site="$(mktemp -d)"
    python3 -m pip install -q --root-user-action=ignore --no-index --no-deps --no-compile --no-cache-dir --target "$site" gpu-wheels/*.whl &&
        export ARTIST_EXTRA_SITE="$site" &&
        peers >> "$out/device.txt" 2>&1 && echo "(transformers from gpu-wheels/)" >> "$out/device.txt"
fi
tail -2 "$out/device.txt"

# The tests open fixtures and binaries under the build machine's checkout path.
build_root="$(cat "$b/BUILD_ROOT")"
if [ "$build_root" != "$root" ] && [ ! -e "$build_root" ]; then
    mkdir -p "$(dirname "$build_root")" && ln -s "$root" "$build_root"
fi
# Unpack (scripts/gpu_bundle.sh compressed everything) into a scratch copy.
u="$(mktemp -d)"
mkdir -p "$u/tests" "$u/bin" target/release
for f in "$b"/tests/*.xz "$b"/bin/*.xz "$b"/cuda_kernels.xz "$b"/rollout.xz "$b"/train_step.xz; do
    [ -e "$f" ] || continue # a call may carry only the parts it runs
    rel="${f#"$b"/}"
    # python3's lzma, in case the image has no xz
    python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
        "$f" "$u/${rel%.xz}"
    chmod +x "$u/${rel%.xz}"
done
cp "$u"/bin/* target/release/ 2>/dev/null || true
export ARTIST_KERNEL_CACHE="$out/kernel-cache" ARTIST_GPU_VERBOSE=1 RUST_BACKTRACE=1

# A step: its log under $out, stopped after $limit seconds (a stop counts as a failure).
guarded() { # log file, then the command
    local log="$1"
    shift
    local left=$((deadline - SECONDS)) t="$limit"
    if [ "$left" -lt 20 ]; then
        echo "SKIPPED (SUITE_TIMEOUT reached): $log" | tee -a "$out/failures.txt"
        status=1
        return
    fi
    [ "$left" -lt "$t" ] && t=$((left - 10))
    timeout --kill-after=10 "$t" "$@" 2>&1 | tee "$out/$log"
    local rc=${PIPESTATUS[0]}
    if [ "$rc" -ne 0 ]; then
        echo "FAILED ($([ "$rc" -ge 124 ] && echo "stopped after ${t}s" || echo "exit $rc")): $log" | tee -a "$out/failures.txt"
        status=1
    fi
}
run() { # name, then the test binary's arguments
    local name="$1"
    shift
    step "$name"
    guarded "$name.log" "$u/tests/$name" "$@"
}
if wants tests; then
    run nvrtc --test-threads=1 --nocapture
    run cuda --test-threads=1
    run cuda_model --test-threads=1
    step "training with bf16 attention on Hopper's wgmma, forward and backward (ARTIST_ATTN_WGMMA=1; mma.sync elsewhere)"
    guarded cuda_model_wgmma.log env ARTIST_ATTN_WGMMA=1 "$u/tests/cuda_model" bf16_attention --test-threads=1
    run cli generate_and_score_on_the_cuda_backend --test-threads=1
    run train_cli on_the_cuda_backend --test-threads=1 --nocapture
    run nccl --test-threads=1 --nocapture
    run rollout cuda --test-threads=1 --nocapture
    run gpu_sampling --test-threads=1
fi

if wants bench; then
    step "kernel benchmark beside PyTorch"
    guarded bench.log python3 scripts/bench_cuda.py --bench "$u/cuda_kernels" --out "$out"
    grep -E "^\||ceilings" "$out/bench.log" > "$out/bench.md" 2>/dev/null

    step "attention forward and backward off the tensor cores (ARTIST_ATTN_MMA=0), for the ratio"
    guarded attention_one_warp_per_row.log env ARTIST_ATTN_MMA=0 "$u/cuda_kernels" --bench 'attention_(fwd|bwd)'

    step "memory-bound kernels element by element (ARTIST_VEC=0), for the ratio"
    guarded mem_element_by_element.log env ARTIST_VEC=0 "$u/cuda_kernels" --bench \
        'mem/(copy|add|cast|rms|rope|silu|softmax|log_softmax|embedding|token|adamw)'

    step "batch-1 decode products without the split of k (ARTIST_GEMV_SPLIT=1), for the ratio"
    guarded gemv_unsplit.log env ARTIST_GEMV_SPLIT=1 "$u/cuda_kernels" --bench 'mem/gemv'

    step "a training step of a Qwen2.5-1.5B shape beside PyTorch (bf16 products and attention)"
    guarded train_step.log python3 scripts/bench_train_step.py --bench "$u/train_step" --device cuda \
        --model 1.5b --bf16 --batch "${TRAIN_BATCH:-4}" --seq "${TRAIN_SEQ:-1024}" --steps 3 --no-checkpointing

    step "the same step with LoRA adapters of rank 16 (PyTorch through PEFT where it is installed)"
    guarded train_step_lora.log python3 scripts/bench_train_step.py --bench "$u/train_step" --device cuda \
        --model 1.5b --bf16 --batch "${TRAIN_BATCH:-4}" --seq "${TRAIN_SEQ:-1024}" --steps 3 --no-checkpointing \
        --lora-rank 16

    step "rollouts beside transformers' generate"
    shape=(--model 1.5b --prompts "${ROLLOUT_PROMPTS:-4}" --group 8 --prompt-len 512 --new "${ROLLOUT_NEW:-128}" --decode 64)
    guarded rollout.jsonl "$u/rollout" --device cuda "${shape[@]}"
    guarded rollout_hf.log python3 scripts/bench_rollout_hf.py --device cuda "${shape[@]}" --ours "$out/rollout.jsonl"
    step "rollouts with bf16 products and a bf16 KV cache, same shape"
    guarded rollout_bf16.jsonl "$u/rollout" --device cuda "${shape[@]}" --decode 0 --matmul-dtype bf16 --kv-dtype bf16
    step "the same with one warp per query head (ARTIST_ATTN_GROUP=0), for the ratio"
    guarded rollout_bf16_per_head.jsonl env ARTIST_ATTN_GROUP=0 \
        "$u/rollout" --device cuda "${shape[@]}" --decode 0 --matmul-dtype bf16 --kv-dtype bf16
    step "bf16 rollouts with LoRA adapters of rank 16, applied unmerged, for the ratio"
    guarded rollout_bf16_lora.jsonl "$u/rollout" --device cuda "${shape[@]}" --decode 0 --matmul-dtype bf16 \
        --kv-dtype bf16 --lora-rank 16
fi

step "summary"
{
    cat "$out/device.txt"
    grep -hE "^test result|FAILED|SKIPPED" "$out"/*.log "$out/failures.txt" 2>/dev/null
    cat "$out/bench.md" 2>/dev/null
    grep -E "^\|" "$out/train_step.log" "$out/train_step_lora.log" 2>/dev/null
    grep -E "x$" "$out/rollout_hf.log" 2>/dev/null
    grep -hE "sampled_tokens_per_s|batch1_decode|attention_tflops" "$out"/rollout.jsonl "$out"/rollout_bf16*.jsonl 2>/dev/null
} | tee "$dest/summary.txt"
pack
exit $status
