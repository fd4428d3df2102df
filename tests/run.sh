#!/usr/bin/env bash
# The test command (README): the unit tests on both CPU cores, then every benchmark once as a
# smoke run (quick shapes, no timing).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pytest -q -n 2 --durations=15 tests
D4K_BENCH_QUICK=1 python -m pytest -q bench --benchmark-disable -p no:cacheprovider
