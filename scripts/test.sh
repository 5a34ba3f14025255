#!/usr/bin/env bash
# Installs, builds and runs every test: first a Release build (unit tests, the
# install-and-consume test, the examples, tapedump); then one clang build with
# AddressSanitizer + UndefinedBehaviorSanitizer and libFuzzer's coverage, which
# runs the unit tests and the data loader's tests again, the tape-file
# loader's fuzz target for 20 s and the checkpoint loader's for 10 s on their corpora; then the tests that run several
# user threads under ThreadSanitizer (built meanwhile, in the background).
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS
phase() { echo "[test.sh] $1 ($((SECONDS - started)) s so far)"; }
bash scripts/install-deps.sh --tests
jobs=$(nproc)
phase "dependencies installed"

cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DTAPEGRAD_BUILD_TOOLS=ON -DTAPEGRAD_BUILD_BENCHMARKS=OFF
cmake --build build -j "$jobs"
ctest --test-dir build --output-on-failure
phase "release build and tests done"

# One library build serves the sanitizer run of the tests and the fuzz target (TAPEGRAD_FUZZ implies the sanitizers).
# The sanitizer builds compile at -O1 -g1 (line tables only): stack traces keep their lines, and
# the builds take about half as long as at -O2 -g.
sanitizer_flags=(-DCMAKE_BUILD_TYPE=RelWithDebInfo "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -g1")
CXX=clang++-16 cmake -S . -B build-asan-fuzz -G Ninja "${sanitizer_flags[@]}" -DTAPEGRAD_FUZZ=ON \
      -DTAPEGRAD_BUILD_TOOLS=ON -DTAPEGRAD_BUILD_BENCHMARKS=OFF -DTAPEGRAD_BUILD_EXAMPLES=ON
cmake --build build-asan-fuzz -j "$jobs" --target tapegrad_tests cnn_tests fuzz_tape_file fuzz_safetensors
phase "sanitizer build done"

# The ThreadSanitizer build runs in the background while the sanitizer tests and
# the fuzzer (one thread) run: together they fill both cores.
# At -O0: it compiles in half the time of -O1, and the thread tests take seconds either way.
cmake -S . -B build-tsan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O0 -g1" \
      -DTAPEGRAD_TSAN=ON -DTAPEGRAD_BUILD_TOOLS=OFF -DTAPEGRAD_BUILD_EXAMPLES=OFF > /dev/null
cmake --build build-tsan -j "$jobs" --target tapegrad_thread_tests > build-tsan/build.log 2>&1 &
tsan_build=$!
corpus=$(mktemp -d)
cleanup() {
  [[ -n $tsan_build ]] && kill "$tsan_build" 2> /dev/null
  rm -rf "$corpus"
}
trap cleanup EXIT

# allocator_may_return_null: an impossible allocation must reach tapegrad as a null
# pointer (and become a tg::Error), as it does without the sanitizer.
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:allocator_may_return_null=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir build-asan-fuzz --output-on-failure -j "$jobs" -R 'unit|loader'
phase "sanitizer tests done"

# New inputs go to the scratch corpus; a crash leaves its input in build-asan-fuzz/ and fails the run.
OMP_NUM_THREADS=1 build-asan-fuzz/tests/fuzz/fuzz_tape_file -max_total_time=20 -timeout=10 -rss_limit_mb=4096 \
  -artifact_prefix=build-asan-fuzz/ "$corpus" tests/fuzz/corpus
mkdir "$corpus/safetensors"
OMP_NUM_THREADS=1 build-asan-fuzz/tests/fuzz/fuzz_safetensors -max_total_time=10 -timeout=10 -rss_limit_mb=4096 \
  -artifact_prefix=build-asan-fuzz/ "$corpus/safetensors" tests/fuzz/safetensors_corpus
phase "fuzzing done"

wait "$tsan_build" || { cat build-tsan/build.log; exit 1; }
tsan_build=
ctest --test-dir build-tsan --output-on-failure -R threads_tsan
phase "thread tests done"
