#!/usr/bin/env bash
# Installs what tapegrad needs to build and test on Debian 12, from Debian's packages.
#   --tests       also what only the test command needs (Graphviz, clang 16 for the fuzz target)
#   --with-torch  also LibTorch (libtorch-dev) and oneDNN (libdnnl-dev), the comparisons in benchmarks (large; never
#                 library dependencies)
set -euo pipefail
packages=(cmake ninja-build g++ libfmt-dev libopenblas-openmp-dev libfftw3-dev zlib1g-dev doctest-dev dataset-fashion-mnist nlohmann-json3-dev
          libpng-dev gnuplot-nox)
# libpng-dev: the denoising example's image grid; gnuplot-nox: the training charts.
# graphviz: the tests render tapedump's DOT output; clang-16 and its runtimes: the
# tape-file loader's libFuzzer target (clang 15+ for std::source_location).
# python3-numpy: an independent reader of the safetensors checkpoints.
[[ "${1:-}" == "--tests" ]] && packages+=(graphviz clang-16 libclang-rt-16-dev libomp-16-dev python3-numpy)
[[ "${1:-}" == "--with-torch" ]] && packages+=(libtorch-dev libdnnl-dev)
missing=()
for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
  sudo=""
  [[ $(id -u) -ne 0 ]] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
echo "install-deps: ${#packages[@]} packages present"
