#!/usr/bin/env bash
# Installs, builds and runs the main job: LeNet trained on Fashion-MNIST (2 epochs;
# extra flags go to the program, e.g. --quick or --epochs 1).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DTAPEGRAD_BUILD_TOOLS=OFF
cmake --build build -j "$(nproc)" --target lenet
./build/examples/lenet --out build "$@"
