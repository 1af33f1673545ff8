#!/usr/bin/env bash
# Installs what is missing, builds the demo and runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-debian.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DSPADE_BUILD_TESTS=OFF -DSPADE_BUILD_BENCHMARKS=OFF
cmake --build build -j2 --target demo
OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} ./build/examples/demo
