#!/usr/bin/env bash
# The main job: every mask family at real video shapes. On a GPU: time and effective
# TFLOP/s against dense attention; without one it says so and runs the CPU reference
# (and the kernel-schedule emulator) on small shapes. Mask pictures go to out/.
set -euo pipefail
cd "$(dirname "$0")/.."
NVCC=$(scripts/setup-cuda.sh)
export NVCC
cargo run --release --example maskattn -- demo --out out "$@"
