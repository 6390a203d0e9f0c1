#!/usr/bin/env bash
# On the device machine (H100: compute-sanitizer does not work on the H200): memcheck
# and racecheck on each kernel family's small sanitizer subset. Needs .gpu/ from
# scripts/gpu-bundle.sh. Log in $OUT/sanitizer.log; exit 1 on any finding.
set -uo pipefail
OUT=${OUT:-/tmp/maskattn-out}; mkdir -p "$OUT"
export MASKATTN_REQUIRE_GPU=1
rc=0
for pair in kernels_forward:sanitizer_subset kernels_backward:sanitizer_subset_bwd kernels_xattn:sanitizer_subset; do
  bin=$(ls .gpu/tests/"${pair%%:*}"-* | head -n1)
  for tool in memcheck racecheck; do
    echo "== compute-sanitizer --tool $tool $bin ${pair#*:}" | tee -a "$OUT/sanitizer.log"
    compute-sanitizer --tool "$tool" --error-exitcode 1 "$bin" --exact "${pair#*:}" --test-threads=1 2>&1 | tee -a "$OUT/sanitizer.log"
    [ "${PIPESTATUS[0]}" -eq 0 ] || rc=1
  done
done
exit $rc
