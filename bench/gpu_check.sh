#!/usr/bin/env bash
# One script for a GPU machine (H100/H200): the CUDA tests, the VAE decodes and the 4K benchmarks in about
# 5 minutes (D4K_GPU_BUDGET), a short table last. Usage on the device machine (from the repo root):
#     bash bench/gpu_check.sh            # carry .whl (bench/fetch_gpu_wheels.sh) for the peers
# Logs and JSON are written to a work folder as the steps go and packed into $OUT/gpu_check.tgz at the
# end (the device tool brings back at most 8 files), beside $OUT/summary.txt; copy the numbers into
# bench/RESULTS.md with the device and date.
set -uo pipefail
cd "$(dirname "$0")/.."
FINAL=${OUT:-/tmp/d4k-gpu-out}
OUT=$(mktemp -d /tmp/d4k-gpu-work.XXXX)
mkdir -p "$FINAL"
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

# The whole script keeps to a deadline (D4K_GPU_BUDGET seconds, default 300): each step gets its own
# limit or what is left, whichever is smaller, and every step leaves its log/JSON under $OUT as it goes.
T0=$(date +%s); BUDGET=${D4K_GPU_BUDGET:-300}
left() { local l=$(( BUDGET - ($(date +%s) - T0) )); (( l < $1 )) && echo $(( l > 5 ? l : 5 )) || echo "$1"; }

# 1. the CUDA tests: every test parametrised on ('triton', 'cuda'), the cuda-marked ones and the GLCM
#    'triton' / 'cuda' paths (on CUDA tensors there); not the CPU-only paths and sm_90 compile checks
#    that CI runs (they take minutes); 8 workers so the Triton/inductor compiles use the host cores
tests_rc=0
if [[ "${D4K_GPU_TESTS:-}" == none ]]; then
  echo "CUDA tests skipped (D4K_GPU_TESTS=none)" > "$OUT/tests_cuda.log"
else
  timeout "$(left ${D4K_GPU_TEST_LIMIT:-120})" python3 -m pytest -v -n 8 -p no:cacheprovider -p no:benchmark tests -k "${D4K_GPU_TESTS:-(cuda or triton) and not sm90}" -rf 2>&1 \
    | tee "$OUT/tests_cuda.log" | grep -E "FAILED|ERROR|passed|failed" | tail -n 25
  tests_rc=${PIPESTATUS[0]}
fi

# 2. VAE decodes take seconds each: one table of time, peak memory and PSNR against the untiled decode
#    (Flux untiled, exact tiled, 8192^2, diffusers tiled, then SC-VAE F16) instead of the repeated-timing
#    runner; D4K_GPU_VAE_ARGS adds e.g. "--tiles 171,256" (a tile sweep), "--no-8k" or "--only REGEX". The
#    8192^2 decode alone takes about a minute cold, half that warm, on an H200 (bench/NOTES_vae.md); the
#    Flux 4096^2 untiled and exact tiled times are medians of 3 warm runs (~25 s more); the rows print as
#    they finish
bench_rc=0
timeout "$(left ${D4K_GPU_VAE_LIMIT:-140})" python3 -m d4k_kernels.benchmarks.vae --device cuda ${D4K_GPU_VAE_ARGS:-} > "$OUT/vae_memory.log" 2>&1 \
  || { echo "vae memory table stopped (rc $?), see vae_memory.log"; bench_rc=1; }

# 3a. attention at head dim 512 (the VAE mid-block at 4096^2 and 8192^2) beside torch SDPA's backends,
#     with the kernel's other tilings at 4096^2; pytest-benchmark JSON (median time, TFLOP/s per case);
#     D4K_GPU_ATTN=0 skips it (about 90 s on an H200 by the case list: ~0.4 s a call for d4k, ~1.6 s for SDPA)
if [[ "${D4K_GPU_ATTN:-1}" == 1 ]]; then
  timeout "$(left ${D4K_GPU_ATTN_LIMIT:-120})" python3 -m pytest -q -p no:cacheprovider bench/bench_attention.py \
    --benchmark-min-rounds=3 --benchmark-warmup=off --benchmark-columns=median,rounds \
    --benchmark-json "$OUT/bench_attention.json" > "$OUT/bench_attention.log" 2>&1 \
    || { echo "bench attention stopped (rc $?), see bench_attention.log"; bench_rc=1; }
fi

# 3. the 4K benchmarks, one table per op family (d4k beside its peers); JSON rows are written after every
#    group, so a family stopped by its limit keeps what it finished
declare -A LIMIT=([haar]=40 [wavelet_loss]=${D4K_GPU_WLF_LIMIT:-45} [upconv]=40 [glcm]=30)
for op in ${D4K_GPU_OPS:-wavelet_loss upconv haar glcm}; do   # D4K_GPU_OPS=none: no family benchmarks
  [[ "$op" == none ]] && continue
  timeout "$(left "${LIMIT[$op]}")" python3 -m d4k_kernels.cli bench --device cuda --op "$op" --json "$OUT/bench_$op.json" \
    > "$OUT/bench_$op.log" 2>&1 || { echo "bench $op stopped (rc $?), see bench_$op.log"; bench_rc=1; }
done
# 4. where the eager time of the WLF goes (host launch costs vs kernels), when asked for
if [[ "${D4K_GPU_PROFILE:-0}" == 1 ]]; then
  timeout "$(left 40)" python3 bench/gpu_profile_wlf.py > "$OUT/profile_wlf.log" 2>&1 || echo "wlf profile stopped (rc $?)"
fi
# 5. pinning cost and pinned copy bandwidth (where the 8192^2 tiled decode's time goes), when asked for
if [[ "${D4K_GPU_PINNED:-0}" == 1 ]]; then
  timeout "$(left 60)" python3 bench/gpu_pinned.py > "$OUT/pinned.log" 2>&1 || echo "pinned stopped (rc $?)"
fi
# 6. `d4k eval` under torchrun on the GPU (nccl), its scores checked against the CPU path, when asked for
if [[ "${D4K_GPU_EVAL:-0}" == 1 ]]; then
  timeout "$(left 60)" bash bench/gpu_nccl_eval.sh "$OUT/eval" > "$OUT/eval_nccl.txt" 2>&1 || echo "nccl eval stopped (rc $?)"
fi
# 7. launch-configuration sweeps (GPU time of variants), when asked for
if [[ "${D4K_GPU_SWEEP:-0}" == 1 ]]; then
  timeout "$(left 90)" python3 bench/gpu_sweep.py ${D4K_GPU_SWEEP_ARGS:-} > "$OUT/sweep.log" 2>&1 || echo "sweep stopped (rc $?)"
fi

{
echo
echo "=== d4k gpu_check: $(sed -n 2p "$OUT/device.txt"), $(( $(date +%s) - T0 )) s ==="
echo "CUDA tests: $(grep -E '[0-9]+ (passed|failed)' "$OUT/tests_cuda.log" | tail -n 1) (rc $tests_rc)"
grep -E 'FAILED|ERROR' "$OUT/tests_cuda.log" | grep -v '^E ' | sed 's/^\[gw[0-9]*\] \[ *[0-9]*%\] //' | sort -u | cut -c1-150 | head -n 12
if compgen -G "$OUT/bench_*.json" >/dev/null; then
python3 -c "import sys; from d4k_kernels.benchmarks import summary_from_json as s; s(sys.argv[1:])" "$OUT"/bench_*.json
# d4k variants that the summary's one d4k column leaves out (e.g. wavelet_loss_and_grad beside autograd)
python3 - "$OUT"/bench_*.json <<'PY'
import json, sys
for p in sys.argv[1:]:
    try:
        rows = json.load(open(p))["rows"]
    except (OSError, ValueError, KeyError):
        continue
    for r in rows:
        if r["impl"].startswith("d4k ") and "triton" not in r["impl"]:
            print(f"  {r['group'][:43]:<44}{r['impl'][:24]:<25}{r['ms']:>9.4f} ms  graph {r.get('graph_ms', float('nan')):.4f} ms")
PY
fi
if [[ -f "$OUT/bench_attention.json" ]]; then
python3 - "$OUT/bench_attention.json" <<'PY'
import json, sys
print("attention (median ms, TFLOP/s = 4*M*N*D per head / median)")
for b in json.load(open(sys.argv[1]))["benchmarks"]:
    ms, tf = b["stats"]["median"] * 1e3, b["extra_info"].get("TFLOP/s", float("nan"))
    print(f"  {b['group'][:66]:<67}{b['extra_info']['impl'][:34]:<35}{ms:>10.2f} ms {tf:>8.3g}")
PY
fi
[[ -f "$OUT/sweep.log" ]] && grep -v -i warn "$OUT/sweep.log"
[[ -f "$OUT/pinned.log" ]] && cat "$OUT/pinned.log"
[[ -f "$OUT/eval_nccl.txt" ]] && cat "$OUT/eval_nccl.txt"
[[ -f "$OUT/profile_wlf.log" ]] && grep -E "^(empty|torch.add|\()" "$OUT/profile_wlf.log"
grep -v Warning "$OUT/vae_memory.log" 2>/dev/null | tail -n 12
} 2>&1 | tee "$FINAL/summary.txt"
tar -czf "$FINAL/gpu_check.tgz" -C "$OUT" .
exit $(( tests_rc || bench_rc ))
