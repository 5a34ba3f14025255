#!/usr/bin/env bash
# Builds the benchmarks with LibTorch as the comparison and runs them.
#   bash scripts/bench.sh [overhead|conv|compile|compile_time|lenet|all] [flags for the bench program]
set -euo pipefail
cd "$(dirname "$0")/.."
which="${1:-all}"
[[ $# -gt 0 ]] && shift
bash scripts/install-deps.sh --with-torch
cmake -S . -B build-bench -G Ninja -DCMAKE_BUILD_TYPE=Release -DTAPEGRAD_BUILD_TOOLS=ON -DTAPEGRAD_NATIVE=ON
cmake --build build-bench -j "$(nproc)" --target bench_overhead bench_conv bench_lenet bench_compile bench_compile_time
run() { ./build-bench/tools/"bench_$1" "${@:2}"; }
case "$which" in
  overhead | conv | lenet | compile | compile_time) run "$which" "$@" ;;
  all) run overhead "$@" && run conv "$@" && run compile "$@" && run lenet "$@" ;;
  *) echo "bench.sh: unknown benchmark '$which' expected overhead, conv, compile, compile_time, lenet or all" >&2; exit 2 ;;
esac
