#!/usr/bin/env bash
# Issue 14's GPU checks in one prepared command, for a machine with one CUDA GPU (at most 9 minutes on an H100/H200
# after the install: each benchmark has its own time limit, so the whole fits one 10-minute device call):
#
#   bash pipelines/gpu-checks.sh OUT [FLAGS]  # OUT: a folder for the JSON and text results (created);
#                                             # FLAGS go to every benchmark (--smoke: a few steps each)
#
# 1. capture_equality: the captured CUDA-graph step against the eager one (same seed: metrics, masks, statistics
#    within the stated tolerances; the packed job with capture on and off too), and no host sync over a captured
#    epoch (set_sync_debug_mode("error"));
# 2. gpu_floor: pracset's epoch against the CUDA-graph floor (ResNet-20 / CIFAR-10 shapes at batch 128,
#    LeNet-300-100 / MNIST shapes), recorder on and off, static mask, RigL, GraNet, capture off and on;
# 3. packed: 9 ResNet-20s (3 data orders: 3 seeds x a ticket and its 2 controls) packed against one, each eager and
#    captured, and no host sync in a packed step (eager and captured).
# Each prints its VERDICT line; a failing check does not stop the next. The exit status is the first failure's.
set -u
out=${1:?usage: bash pipelines/gpu-checks.sh OUT [FLAGS]}
shift
mkdir -p "$out"
export PYTHONUNBUFFERED=1
status=0
run() {
    local name=$1 limit=$2
    shift 2
    echo "== $name"
    timeout "$limit" python -m "pipelines.benchmarks.$name" --device cuda --json "$out/$name.json" "$@" \
        2>&1 | tee "$out/$name.txt"
    local rc=${PIPESTATUS[0]}
    if [ "$rc" -ne 0 ] && [ "$status" -eq 0 ]; then status=$rc; fi
}
# GPU_CHECKS picks some of them (e.g. GPU_CHECKS=packed for a second call); a benchmark stopped at its limit keeps
# what it printed in OUT/NAME.txt.
for name in ${GPU_CHECKS:-capture_equality gpu_floor packed}; do
    case $name in
        capture_equality) run capture_equality 150 "$@" ;;
        gpu_floor) run gpu_floor 200 "$@" ;;
        packed) run packed 180 --repeats 2 "$@" ;;
        *) echo "unknown check $name (capture_equality, gpu_floor, packed)" >&2; exit 2 ;;
    esac
done
exit "$status"
