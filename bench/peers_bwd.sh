#!/usr/bin/env bash
# The backward comparison, on the device machine in one call (so the ratios come from
# one run on one device): our bench program with --bwd (atomic dQ, deterministic dQ,
# and the dense mask of the same shape), then FlexAttention / SDPA backward on the same
# cases (shared/peers/flex_sdpa.py --bwd). Both credit 10 * B * H * D * visible_pairs
# per backward pass. Needs .gpu/ from scripts/gpu-bundle.sh (here), then on the device:
#   device tool: carry [".gpu"], command: bash bench/peers_bwd.sh [CASE ...]
# Results in $OUT: bench_bwd.json / bench_bwd.log (ours), peers_bwd.json / peers_bwd.log.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/maskattn-out}; mkdir -p "$OUT"
cases=("$@")
[ ${#cases[@]} -gt 0 ] || cases=(causal_16k fwbc_t16 fwbc_t64 ccam_t16_b8 ccam_t96_b1)
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
rc=0
if [ -x .gpu/examples/bench ]; then
  .gpu/examples/bench --bwd --json "$OUT/bench_bwd.json" "${cases[@]}" 2>&1 | tee "$OUT/bench_bwd.log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || rc=1
else
  echo "no .gpu/examples/bench: run scripts/gpu-bundle.sh first; timing the peers only" | tee "$OUT/bench_bwd.log"
  rc=1
fi
python3 .gpu/flex_sdpa.py --bwd --json "$OUT/peers_bwd.json" "${cases[@]}" 2>&1 | tee "$OUT/peers_bwd.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || rc=1
exit $rc
