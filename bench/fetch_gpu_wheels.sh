#!/usr/bin/env bash
# Run HERE (with network) before a GPU session: downloads the pure-Python reference/peer packages that
# the lent GPU machine lacks into .whl/ (git-ignored; the device tool's `carry` takes it along).
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
