// Tile sizes, thread roles and the shared-memory layout of the Hopper forward kernel
// (csrc/hopper_fwd.cu). The numbers come from params.h, which the Rust launcher
// reads too; this file derives the rest and checks that the two agree.
#pragma once

#include "hopper/smem_desc.cuh"
#include "params.h"

namespace maskattn {
namespace hopper_fwd {

template <typename Elem_, int D>
struct Traits {
    static_assert(D == 64 || D == 96 || D == 128, "head dims 64, 96, 128");
    static_assert(sizeof(Elem_) == 2, "16-bit elements");
    using Elem = Elem_;

    static constexpr int kHeadDim = D;
    static constexpr int kBlockM = MASKATTN_HOPPER_FWD_BLOCK_M;
    static constexpr int kBlockN = MASKATTN_HOPPER_FWD_BLOCK_N;
    static constexpr int kStages = MASKATTN_HOPPER_FWD_STAGES;
    static constexpr int kThreads = MASKATTN_HOPPER_FWD_THREADS;
    // Warpgroup 0 produces, 1 and 2 consume: each consumer owns one wgmma m64 of rows.
    static constexpr int kConsumers = kThreads / 128 - 1;
    static constexpr int kConsumerRows = 64;
    static_assert(kConsumers * kConsumerRows == kBlockM, "the consumers split the query tile");
    static_assert(kBlockM == MASKATTN_SELECT_BLOCK && kBlockN == MASKATTN_SELECT_BLOCK,
                  "a (query tile, key tile) pair is one selection block");
    // Registers per thread after setmaxnreg: 128 x 56 + 256 x 224 = 64,512 = 384 x 168,
    // the count ptxas gives the kernel at entry under __launch_bounds__(384, 1). A
    // consumer holds S (64), P (32) and O (D / 2) at once; the producer's warp reduction
    // of the tile summary spills below 56.
    static constexpr int kProducerRegs = 56;
    static constexpr int kConsumerRegs = 224;

    // A tile is stored as 64-column chunks of 128-byte rows in the 128-byte swizzle
    // (the widest row TMA and wgmma swizzle): chunk c holds columns 64 c .. 64 c + 63.
    static constexpr int kChunks = (D + 63) / 64;
    static constexpr int kRowBytes = 128;
    static constexpr int kQBytes = kChunks * kBlockM * kRowBytes;
    static constexpr int kKVBytes = kChunks * kBlockN * kRowBytes;  // one K or one V tile
    static constexpr int kStageBytes = 2 * kKVBytes;
    static constexpr int kTileBytes = kQBytes + kStages * kStageBytes;
    // From the 1,024-aligned base: Q, stage s's K at kQBytes + s * kStageBytes and its
    // V kKVBytes further, then the mbarriers and the stages' walk entries.
    static constexpr int kBarrierBytes = 8 * (2 + 3 * kStages);
    static constexpr int kWalkBytes = 8 * kStages;
    static_assert(kBarrierBytes + kWalkBytes <= 128, "params.h reserves 128 bytes");
    static constexpr int kSmemBytes = D == 64   ? MASKATTN_HOPPER_FWD_SMEM_D64
                                      : D == 96 ? MASKATTN_HOPPER_FWD_SMEM_D96
                                                : MASKATTN_HOPPER_FWD_SMEM_D128;
    static_assert(kSmemBytes == 1024 + kTileBytes + 128, "params.h MASKATTN_HOPPER_FWD_SMEM_* = align + tiles + 128");

    // wgmma steps: S = Q K^T over D in k16 slices, O += P V over the tile's keys.
    static constexpr int kQKSteps = D / 16;
    static constexpr int kPVSteps = kBlockN / 16;
};

// The wgmma descriptor of rows of a K-major chunk (Q or K): 8-row groups 1,024 bytes
// apart (SBO), the k16 slice 32 bytes into the swizzled row; LBO unused.
__device__ __forceinline__ uint64_t k_major_desc(uint32_t addr) {
    return sm90::make_smem_desc(addr, 16, 1024, sm90::SmemSwizzle::k128B);
}

// The descriptor of V as wgmma's B of O += P V (N = head dim, K = keys): stored
// key-major, so N-major (trans-b): 64-column chunks `chunk_bytes` apart along N (LBO),
// 8-key groups 1,024 bytes apart along K (SBO).
__device__ __forceinline__ uint64_t n_major_desc(uint32_t addr, uint32_t chunk_bytes) {
    return sm90::make_smem_desc(addr, chunk_bytes, 1024, sm90::SmemSwizzle::k128B);
}

}  // namespace hopper_fwd
}  // namespace maskattn
