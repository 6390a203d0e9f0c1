#!/usr/bin/env bash
# The main job: every mask family at real video shapes. On a GPU: time and effective
# TFLOP/s against dense attention; without one it says so and runs the kernels on the
# CPU backend (forward and backward) on small shapes of every family, against the f64
# reference. Mask pictures go to out/.
set -euo pipefail
cd "$(dirname "$0")/.."
NVCC=$(scripts/setup-cuda.sh)
export NVCC
cargo run --release --example maskattn -- demo --out out "$@"
