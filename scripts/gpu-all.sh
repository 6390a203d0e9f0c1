#!/usr/bin/env bash
# On the device machine, one call: every test binary (GPU tests must not skip), the
# sanitizers, our bench program, then the peers (FlexAttention, SDPA) on the same cases,
# so that ratios come from one run. Everything lands in $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/maskattn-out}; mkdir -p "$OUT"
rc=0
bash .gpu/run.sh tests || rc=1
bash scripts/gpu-sanitize.sh || rc=1
.gpu/examples/bench --json "$OUT/bench.json" "$@" 2>&1 | tee "$OUT/bench_program.log"; [ "${PIPESTATUS[0]}" -eq 0 ] || rc=1
bash .gpu/run.sh peers causal_16k causal_32k causal_64k fwbc_t16 fwbc_t64 ccam_t16_b8 ccam_t96_b1 || rc=1
exit $rc
