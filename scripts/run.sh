#!/usr/bin/env bash
# Installs, builds and runs the main job (for now: gradients of a small model).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DTAPEGRAD_BUILD_TOOLS=OFF
cmake --build build -j "$(nproc)" --target small_model
./build/examples/small_model
