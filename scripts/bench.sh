#!/usr/bin/env bash
# Builds the benchmarks with LibTorch as the comparison and runs them.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh --with-torch
cmake -S . -B build-bench -G Ninja -DCMAKE_BUILD_TYPE=Release -DTAPEGRAD_BUILD_TOOLS=ON
cmake --build build-bench -j "$(nproc)" --target bench_overhead
./build-bench/tools/bench_overhead "$@"
