// Tile sizes of the backward kernels per element type, head dim and configuration. The
// numbers come from params.h (MASKATTN_BWD_*), which the Rust launcher reads too; this
// file derives the per-warp fragment counts and the shared-memory map, and the entry
// points check that the two agree.
#pragma once

#include "fwd/smem_layout.cuh"
#include "params.h"

namespace maskattn {
namespace bwd {

// The main kernel: a CTA owns BLOCK_N keys of one (batch, kv head), warp w the 16 keys
// 16 w .. 16 w + 15 (one m16 fragment: its rows of dK and dV stay in its registers
// for the whole walk). Per query tile of BLOCK_M rows every warp computes
// S^T = K_w Q^T and dP^T = V_w dO^T for its 16 keys and all BLOCK_M queries, so P^T
// and dS^T come out of the mma accumulators already in the A-operand layout of
// dV += P^T dO and dK += dS^T Q (no shared-memory round trip). Only dQ = dS K needs
// dS with the queries as rows: it goes through shared memory as dS^T.
//
// BM query rows per step of the walk; Stages buffers of (Q, dO, row data): 2 overlaps
// the next step's loads with this step's products, 1 (the compact configuration for
// 99 KB parts) issues them once every warp has read this step's.
//
// Output slices: dK and dV of 16 keys x D stay in a warp's registers, D / 2 floats per
// thread, which at D = 256 is more than a thread has. So class 256 splits the output
// columns into kSlices slices of kSliceCols, one CTA each (blockIdx.z): every CTA
// still computes S^T and dP^T over the whole D (their inner dimension), but dV, dK and
// dQ only for its columns. Four slices of 64 repeat S^T and dP^T four times (11 of the
// unsliced kernel's 5 products per pair, 2.2x); two of 128 (1.4x) left the kernel at
// 255 registers with spills on sm_90a or sm_120 whatever else was tried
// (bench/NOTES.md).
template <int D>
struct OutputSlices {
    static constexpr int kSliceCols = D <= 128 ? D : MASKATTN_BWD_SLICE_COLS_D256;
    static constexpr int kSlices = D / kSliceCols;
    static_assert(kSlices * kSliceCols == D, "whole slices");

    // The first output column of this CTA's slice (the compiler sees 0 for one slice).
    __device__ __forceinline__ static int col0() { return kSlices == 1 ? 0 : int(blockIdx.z) * kSliceCols; }
};

template <typename Elem_, int D, int BM, int Stages>
struct BwdTraits : OutputSlices<D> {
    static_assert(D == 64 || D == 96 || D == 128 || D == 256, "head-dim classes 64, 96, 128, 256");
    static_assert(sizeof(Elem_) == 2, "16-bit elements");
    static_assert(Stages == 1 || Stages == 2, "single or double buffer");
    using Elem = Elem_;

    static constexpr int kHeadDim = D;
    static constexpr int kThreads = MASKATTN_BWD_THREADS;
    static constexpr int kWarps = kThreads / 32;
    static constexpr int kBlockM = BM;
    static constexpr int kBlockN = MASKATTN_BWD_BLOCK_N;  // keys per CTA
    static constexpr int kStages = Stages;
    static_assert(MASKATTN_BWD_DQ_BLOCK_M % BM == 0, "len_q_pad (a multiple of the dQ pass's tile) covers BM");
    // One CTA per SM: dK and dV of 16 keys x D in registers (D / 2 + D / 2 per thread)
    // plus S^T and dP^T (BLOCK_M / 4 each) need close to 255 registers at D = 128.
    static constexpr int kMinBlocksPerSm = 1;

    static_assert(kBlockN == 16 * kWarps, "one m16 fragment of keys per warp");
    static_assert(kBlockM % 32 == 0, "dP^T in two halves of whole k16 steps");
    static constexpr int kQFrags = kBlockM / 8;  // n8 fragments of S^T (queries) per warp
    static constexpr int kDFrags = OutputSlices<D>::kSliceCols / 8;  // n8 fragments of dK, dV per warp

    // dQ = dS K of one query tile (the slice's columns): the warps split it into
    // kDqRowGroups m16 row groups times kDqColSplits column ranges of kDqCols columns.
    static constexpr int kDqRowGroups = kBlockM / 16;
    static constexpr int kDqColSplits = kWarps / kDqRowGroups;
    static constexpr int kDqCols = OutputSlices<D>::kSliceCols / kDqColSplits;
    static constexpr int kDqFrags = kDqCols / 8;
    static_assert(kWarps % kDqRowGroups == 0 && kDqCols % 16 == 0, "whole k16-wide dQ column blocks");

    using QTile = fwd::SwizzledTile<kBlockM, D>;        // Q and dO, [query][d]
    using KTile = fwd::SwizzledTile<kBlockN, D>;        // K and V, [key][d]
    using DsTile = fwd::SwizzledTile<kBlockN, kBlockM>;  // dS^T, [key][query]

    // Dynamic shared memory: K | V | (Q | dO) x Stages | dS^T | row data x Stages.
    static constexpr uint32_t kOffK = 0;
    static constexpr uint32_t kOffV = KTile::kBytes;
    static constexpr uint32_t kOffQ = 2 * KTile::kBytes;  // buffer 0; dO follows Q
    static constexpr uint32_t kQdoBufferBytes = 2 * QTile::kBytes;
    static constexpr uint32_t kOffDs = kOffQ + Stages * kQdoBufferBytes;
    static constexpr uint32_t kOffRows = kOffDs + DsTile::kBytes;
    // Per buffer: int4 intervals [BLOCK_M], float lse2 [BLOCK_M], float delta [BLOCK_M].
    static constexpr uint32_t kRowBufferBytes = kBlockM * 24;
    static constexpr int kSmemBytes = int(kOffRows + Stages * kRowBufferBytes);
    static_assert(kBlockM + kBlockM / 2 <= kThreads, "one thread per 16-byte chunk of row data");
};

// The deterministic dQ pass: the forward's schedule (a CTA per query tile walking key
// tiles), warp w owning query rows 16 w .. 16 w + 15 and the slice's dQ columns.
template <typename Elem_, int D>
struct BwdDqTraits : OutputSlices<D> {
    static_assert(D == 64 || D == 96 || D == 128 || D == 256, "head-dim classes 64, 96, 128, 256");
    static_assert(sizeof(Elem_) == 2, "16-bit elements");
    using Elem = Elem_;

    static constexpr int kHeadDim = D;
    static constexpr int kThreads = MASKATTN_BWD_DQ_THREADS;
    static constexpr int kWarps = kThreads / 32;
    static constexpr int kBlockM = MASKATTN_BWD_DQ_BLOCK_M;
    static constexpr int kBlockN = MASKATTN_BWD_DQ_BLOCK_N;
    static constexpr int kSmemBytes = D == 64    ? MASKATTN_BWD_DQ_SMEM_D64
                                      : D == 96  ? MASKATTN_BWD_DQ_SMEM_D96
                                      : D == 128 ? MASKATTN_BWD_DQ_SMEM_D128
                                                 : MASKATTN_BWD_DQ_SMEM_D256;
    static constexpr int kMinBlocksPerSm = 2;

    static constexpr int kWarpRows = kBlockM / kWarps;
    static_assert(kWarpRows == 16, "one m16 fragment of query rows per warp");
    static constexpr int kNFrags = kBlockN / 8;
    static constexpr int kDFrags = OutputSlices<D>::kSliceCols / 8;

    using QTile = fwd::SwizzledTile<kBlockM, D>;
    using KTile = fwd::SwizzledTile<kBlockN, D>;

    // Dynamic shared memory: Q | dO | (K | V) x 2 | intervals | CTA state.
    static constexpr uint32_t kOffQ = 0;
    static constexpr uint32_t kOffDo = QTile::kBytes;
    static constexpr uint32_t kOffK = 2 * QTile::kBytes;  // buffer 0; V follows K
    static constexpr uint32_t kKvBufferBytes = 2 * KTile::kBytes;
    static constexpr uint32_t kOffRows = kOffK + 2 * kKvBufferBytes;
    static constexpr uint32_t kOffCta = kOffRows + kBlockM * 16;
    static constexpr int kCtaStateBytes = 256;
    static_assert(kSmemBytes == int(kOffCta) + kCtaStateBytes,
                  "params.h MASKATTN_BWD_DQ_SMEM_* = Q, dO + 2 x (K, V) + intervals + 256 bytes");
};

}  // namespace bwd
}  // namespace maskattn
