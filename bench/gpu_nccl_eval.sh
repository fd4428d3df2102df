#!/usr/bin/env bash
# `d4k eval` launched by torchrun on the GPU (nccl backend; one rank per GPU, so one rank on a 1-GPU
# machine): 6 generated 2048^2 PNGs + a corrupt file; the merged CSV must list all 7, one skipped.
# Usage (GPU machine, repo root): bash bench/gpu_nccl_eval.sh [OUTDIR]
set -uo pipefail
cd "$(dirname "$0")/.."
OUTD=${1:-/tmp/d4k-nccl}; mkdir -p "$OUTD"
IMG=$(mktemp -d /tmp/d4k-evimg.XXXX)
python3 - "$IMG" <<'PY'
import sys, numpy as np
from PIL import Image
rng = np.random.default_rng(0)
for i in range(6):
    a = (rng.random((2048, 2048, 3)) * 255).astype(np.uint8)
    a[:1024] //= 8  # a smoother half
    Image.fromarray(a).save(f"{sys.argv[1]}/img{i}.png")
open(f"{sys.argv[1]}/broken.png", "wb").write(b"\x89PNG not really")
PY
NP=$(python3 -c "import torch; print(max(1, torch.cuda.device_count()))")
timeout 120 python3 -m torch.distributed.run --standalone --nproc_per_node="$NP" -m d4k_kernels.cli eval "$IMG" \
  --size 2048 --device "${D4K_EVAL_DEVICE:-cuda}" --out "$OUTD/eval_nccl.csv" > "$OUTD/eval_nccl.log" 2>&1
rc=$?
echo "torchrun d4k eval ($NP rank(s)), rc $rc:"; grep -v -i warn "$OUTD/eval_nccl.log" | tail -n 6
echo "rows: $(( $(wc -l < "$OUTD/eval_nccl.csv" 2>/dev/null || echo 1) - 1 ))"
# the same folder on the CPU path (one process): scores must agree to 1e-12
timeout 120 python3 -m d4k_kernels.cli eval "$IMG" --size 2048 --device cpu --out "$OUTD/eval_cpu.csv" > "$OUTD/eval_cpu.log" 2>&1
python3 - "$OUTD/eval_nccl.csv" "$OUTD/eval_cpu.csv" <<'PY'
import csv, sys
a, b = ({r["file"]: r for r in csv.DictReader(open(p))} for p in sys.argv[1:3])
assert a.keys() == b.keys(), (sorted(a), sorted(b))
d = max(abs(float(a[k]["glcm_score"]) - float(b[k]["glcm_score"])) for k in a if a[k]["status"] == "ok")
print(f"torchrun rows vs CPU rows: same {len(a)} files, max |GLCM score difference| {d:.3g}")
sys.exit(0 if d <= 1e-12 else 1)
PY
rc=$(( rc || $? ))
exit $rc
