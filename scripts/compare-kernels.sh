#!/usr/bin/env bash
# The conv kernels of an earlier commit against this tree's, pass by pass, in
# turns: tools/bench_passes.cpp built against each (the same flags as the
# benchmarks: Release, -march=native), then run alternately `rounds` times.
#   bash scripts/compare-kernels.sh REV [rounds] [bench_passes flags]
# e.g. TG_ISA=avx2 bash scripts/compare-kernels.sh 3c03eb5 2 --threads 1,2 --reps 8
# Each line: the layer, the threads, then forward, input gradient and weight
# gradient in ms (the least of --reps calls), REV's line above this tree's.
# REV's tree and build stay in build-compare/REV for the next run (a git
# worktree: `git worktree remove --force build-compare/REV/src` drops it).
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $# -ge 1 ]] || { echo "usage: compare-kernels.sh REV [rounds] [bench_passes flags]" >&2; exit 2; }
rev="$(git rev-parse --short "$1")"
shift
rounds="${1:-2}"
[[ $# -gt 0 ]] && shift
dir="build-compare/$rev"
[[ -d "$dir/src" ]] || git worktree add --detach -f "$dir/src" "$rev" > /dev/null
options=(-G Ninja -DCMAKE_BUILD_TYPE=Release -DTAPEGRAD_NATIVE=ON)
cmake -S "$dir/src" -B "$dir/build" "${options[@]}" -DTAPEGRAD_BUILD_TOOLS=OFF -DTAPEGRAD_BUILD_TESTS=OFF \
      -DTAPEGRAD_BUILD_EXAMPLES=OFF -DCMAKE_PROJECT_INCLUDE="$PWD/scripts/compare-kernels.cmake" \
      -DTG_COMPARE_TOOLS="$PWD/tools" > /dev/null
cmake --build "$dir/build" -j "$(nproc)" --target bench_passes_compare > /dev/null
cmake -S . -B build-bench "${options[@]}" -DTAPEGRAD_BUILD_TOOLS=ON > /dev/null
cmake --build build-bench -j "$(nproc)" --target bench_passes > /dev/null
echo "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), TG_ISA=${TG_ISA:-unset}; $rev above $(git rev-parse --short HEAD)$(git diff --quiet || echo '+changes')"
for ((round = 1; round <= rounds; ++round)); do
  echo "round $round"
  earlier="$("$dir/build/bench_passes_compare" "$@")"  # one after the other, never side by side
  now="$(./build-bench/tools/bench_passes "$@")"
  paste -d '\n' <(sed "s/^/$(printf '%-8s' "$rev") /" <<< "$earlier") <(sed 's/^/now      /' <<< "$now")
done
