#!/usr/bin/env bash
# One script for a lent GPU (H100/H200): the CUDA tests and the 4K benchmarks in under 5 minutes,
# a short table last. Usage on the device machine (from the repo root):
#     bash bench/gpu_check.sh            # carry .whl (bench/fetch_gpu_wheels.sh) for the peers
# Full logs and JSON go to $OUT (the device tool brings them back); copy the numbers into
# bench/RESULTS.md with the device and date.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/d4k-gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export D4K_TEST_INTERPRET=0   # CUDA tensors run the compiled kernels
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
} | tee "$OUT/device.txt"

# 1. the CUDA tests: every test parametrised on ('triton', 'cuda') plus the cuda-marked ones;
#    8 workers so that the many Triton/inductor compiles run on the 16 host cores in parallel
timeout 100 python3 -m pytest -q -n 8 -p no:cacheprovider tests -k "cuda" 2>&1 | tee "$OUT/tests_cuda.log" | tail -n 15
tests_rc=${PIPESTATUS[0]}

# 2. the 4K benchmarks, one table per op family (d4k beside its peers), JSON for RESULTS.md
bench_rc=0
# per-family time limits (s): the whole script stays under 5 minutes
declare -A LIMIT=([haar]=60 [wavelet_loss]=45 [upconv]=60 [glcm]=60)
for op in haar wavelet_loss upconv glcm; do
  timeout "${LIMIT[$op]}" python3 -m d4k_kernels.cli bench --device cuda --op "$op" --json "$OUT/bench_$op.json" \
    > "$OUT/bench_$op.log" 2>&1 || { echo "bench $op failed (rc $?), see bench_$op.log"; bench_rc=1; }
done
# VAE decodes take seconds each: one table of time and peak memory (untiled, diffusers tiled, exact tiled,
# SC-VAE F16, Flux 8192^2) instead of the repeated-timing runner
timeout 75 python3 -m d4k_kernels.benchmarks.vae --device cuda > "$OUT/vae_memory.log" 2>&1 \
  || { echo "vae memory table failed (rc $?), see vae_memory.log"; bench_rc=1; }

echo
echo "=== d4k gpu_check: $(head -n 2 "$OUT/device.txt" | tail -n 1) ==="
echo "CUDA tests: $(grep -E 'passed|failed|error' "$OUT/tests_cuda.log" | tail -n 1) (rc $tests_rc)"
for op in haar wavelet_loss upconv glcm; do
  sed -n '/^summary/,$p' "$OUT/bench_$op.log" 2>/dev/null | grep -v '^summary' || true
done
tail -n 12 "$OUT/vae_memory.log" 2>/dev/null || true
exit $(( tests_rc || bench_rc ))
