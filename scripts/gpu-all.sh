#!/usr/bin/env bash
# On the device machine (after scripts/gpu-bundle.sh here; device tool: carry [".gpu"]).
# One stage per device call keeps each under the 10-minute limit; each benchmark stage
# runs ours and the peers in the same call, so that ratios come from one run.
#   bash scripts/gpu-all.sh tests      every test binary, GPU tests must not skip
#   bash scripts/gpu-all.sh sanitize   compute-sanitizer memcheck + racecheck (H100 only)
#   bash scripts/gpu-all.sh forward    our forward bench + criterion (plots) + FlexAttention/SDPA
#   bash scripts/gpu-all.sh xattn      XAttention bench + SDPA dense causal at 32K-128K
#   bash scripts/gpu-all.sh backward   our backward bench + FlexAttention/SDPA backward
#   bash scripts/gpu-all.sh all        all of the above, in that order
# Everything lands in $OUT (logs and JSON to commit under bench/results/).
set -uo pipefail
OUT=${OUT:-/tmp/maskattn-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
forward_cases=(causal_16k causal_32k causal_64k fwbc_t16 fwbc_t64 ccam_t16_b8 ccam_t96_b1)
rc=0
stage() {
  case "$1" in
    tests) bash .gpu/run.sh tests || rc=1 ;;
    sanitize) bash scripts/gpu-sanitize.sh || rc=1 ;;
    forward)
      .gpu/examples/bench --json "$OUT/bench.json" 2>&1 | tee "$OUT/bench_program.log"; [ "${PIPESTATUS[0]}" -eq 0 ] || rc=1
      CRITERION_HOME="$OUT/criterion" bash .gpu/run.sh benches || rc=1
      bash .gpu/run.sh peers "${forward_cases[@]}" || rc=1 ;;
    xattn)
      .gpu/examples/bench_xattn --json "$OUT/xattn.json" 2>&1 | tee "$OUT/xattn.log"; [ "${PIPESTATUS[0]}" -eq 0 ] || rc=1
      python3 bench/sdpa_causal.py --json "$OUT/sdpa_causal.json" 2>&1 | tee "$OUT/sdpa_causal.log"; [ "${PIPESTATUS[0]}" -eq 0 ] || rc=1 ;;
    backward) bash bench/peers_bwd.sh || rc=1 ;;
    *) echo "unknown stage $1 (tests|sanitize|forward|xattn|backward|all)" >&2; rc=2 ;;
  esac
}
what=${1:-all}
if [ "$what" = all ]; then for s in tests sanitize forward xattn backward; do stage "$s"; done; else stage "$what"; fi
exit $rc
