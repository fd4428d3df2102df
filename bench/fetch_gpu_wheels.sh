#!/usr/bin/env bash
# Run on a machine with network access before using a GPU machine that has none: downloads the
# pure-Python reference/peer packages the GPU machine lacks into .whl/ (git-ignored; copy it along with
# the checkout, and bench/gpu_check.sh installs from it).
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
for spec in diffusers==0.42.1 PyWavelets==1.9.0 pytorch_wavelets==1.3.0 ptwt==1.0.1; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d .whl "$spec" \
  || python3 -m pip download -q --no-deps -d .whl "$spec"
done
ls -la .whl
