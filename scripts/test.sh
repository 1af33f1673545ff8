#!/usr/bin/env bash
# Installs what is missing, configures, builds and runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-debian.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DSPADE_BUILD_BENCHMARKS=OFF
cmake --build build -j2
ctest --test-dir build --output-on-failure -j2
