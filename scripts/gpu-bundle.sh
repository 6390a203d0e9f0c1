#!/usr/bin/env bash
# Here (no GPU needed): builds the test, bench and example binaries in release mode into
# .gpu/ (../shared/gpu/bundle.sh) and records the commit they were built from.
# Then, on the device: run with carry [".gpu"] and `bash scripts/gpu-all.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."
NVCC=$(scripts/setup-cuda.sh)
export NVCC
bash ../shared/gpu/bundle.sh "$@"
git rev-parse HEAD > .gpu/COMMIT
git diff --quiet HEAD || echo "+dirty" >> .gpu/COMMIT
cat .gpu/COMMIT
