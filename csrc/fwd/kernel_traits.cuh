// Tile sizes of the forward kernel per element type and head dim. The numbers
// come from params.h, which the Rust launcher reads too; this file derives the
// per-warp fragment counts and checks that the two agree.
#pragma once

#include "params.h"

namespace maskattn {
namespace fwd {

template <typename Elem_, int D>
struct FwdTraits {
    static_assert(D == 64 || D == 96 || D == 128 || D == 256, "head-dim classes 64, 96, 128, 256");
    static_assert(sizeof(Elem_) == 2, "16-bit elements");
    using Elem = Elem_;

    static constexpr int kHeadDim = D;
    // D = 256: O alone is D floats per thread at 32 rows a warp, so 8 warps of 16 rows.
    static constexpr int kThreads = D == 256 ? MASKATTN_FWD_THREADS_D256 : MASKATTN_FWD_THREADS;
    static constexpr int kWarps = kThreads / 32;
    static constexpr int kBlockM = MASKATTN_FWD_BLOCK_M;
    // Keys per tile: 64, except D = 128, where S (32 registers per 32 keys) and O
    // (128) leave too little of 255 for 64 keys without spills, and D = 256, whose Q
    // tile (64 KB) leaves room for 16-key tiles in a 99 KB budget.
    static constexpr int kBlockN = D == 64    ? MASKATTN_FWD_BLOCK_N_D64
                                   : D == 96  ? MASKATTN_FWD_BLOCK_N_D96
                                   : D == 128 ? MASKATTN_FWD_BLOCK_N_D128
                                              : MASKATTN_FWD_BLOCK_N_D256;
    static constexpr int kSmemBytes = D == 64    ? MASKATTN_FWD_SMEM_D64
                                      : D == 96  ? MASKATTN_FWD_SMEM_D96
                                      : D == 128 ? MASKATTN_FWD_SMEM_D128
                                                 : MASKATTN_FWD_SMEM_D256;
    // Two CTAs per SM hide each other's barriers and latencies (three would cap
    // the registers at 168, which spills); at D = 256 one CTA has 8 warps and needs
    // every register of them.
    static constexpr int kMinBlocksPerSm = D == 256 ? 1 : 2;

    // Each warp owns kWarpRows consecutive query rows as kMFrags m16 fragments.
    static constexpr int kWarpRows = kBlockM / kWarps;
    static constexpr int kMFrags = kWarpRows / 16;
    static constexpr int kNFrags = kBlockN / 8;  // n8 fragments of S per m16 fragment
    static constexpr int kDFrags = D / 8;        // n8 fragments of O per m16 fragment

    static_assert(kThreads % 32 == 0 && kBlockM % (16 * kWarps) == 0, "whole m16 fragments per warp");
    static_assert(kBlockN % 16 == 0 && D % 16 == 0, "whole k16 steps");
    // Dynamic shared memory: the Q tile, two K and two V tiles, then the per-CTA state.
    static constexpr int kTileBytes = (kBlockM + 4 * kBlockN) * D * int(sizeof(Elem));
    static constexpr int kCtaStateBytes = kBlockM * 16 + 256;
    static_assert(kSmemBytes == kTileBytes + kCtaStateBytes,
                  "params.h MASKATTN_FWD_SMEM_* = Q + 2 x (K, V) tiles + row intervals + 256 bytes");
};

}  // namespace fwd
}  // namespace maskattn
