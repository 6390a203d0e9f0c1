#!/usr/bin/env bash
# The main job: builds every mask family at real video shapes, prints their statistics
# and writes their pictures and intervals to out/.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p out
run() { cargo run -q --release --example maskattn -- "$@"; echo; }
cargo build -q --release --example maskattn
run mask fwbc        --layout text:64,frames:16x576,text:128 --png out/fwbc_t16.png --json out/fwbc_t16.json
run mask full-visual --layout text:64,frames:16x576,text:128 --png out/full_visual_t16.png
run mask frame-block --layout text:64,frames:16x576,text:128 --png out/frame_block_t16.png
run mask ccam        --queries 1024 --frames 16 --tokens 729 --png out/ccam_t16.png --json out/ccam_t16.json
run mask cross-local --frames 16 --queries-per-frame 16 --tokens 729 --png out/cross_local_t16.png
run mask window      --lq 16384 --window 4096 --sink 4 --png out/window_16k.png
run mask document    --docs 3000,5000,1384,7000 --causal --png out/document_16k.png
run mask causal      --lq 16384 --png out/causal_16k.png
echo "pictures and intervals are in out/"
