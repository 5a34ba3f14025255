#!/usr/bin/env bash
# Installs, builds and runs every test: first a Release build (unit tests, the
# install-and-consume tests, the examples), then the unit tests and the data
# loader's tests again under AddressSanitizer + UndefinedBehaviorSanitizer.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
jobs=$(nproc)

cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DTAPEGRAD_BUILD_TOOLS=OFF
cmake --build build -j "$jobs"
ctest --test-dir build --output-on-failure

cmake -S . -B build-sanitize -G Ninja -DCMAKE_BUILD_TYPE=Debug -DTAPEGRAD_SANITIZE=ON \
      -DTAPEGRAD_BUILD_TOOLS=OFF -DTAPEGRAD_BUILD_EXAMPLES=ON
cmake --build build-sanitize -j "$jobs" --target tapegrad_tests cnn_tests
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir build-sanitize --output-on-failure -R 'unit|loader'
