// Forward flash attention under interval masks (FlashAttention-2 on mma.sync):
// one CTA per (batch x head, query tile) computes O and LSE of
// MASKATTN_FWD_BLOCK_M query rows, walking only the key tiles the tile's mask
// summary cannot rule out, in ascending order. The walk is specified on the host by
// src/tiles.rs (the same mask_tiles.h, checked against brute force in
// tests/tiles.rs); tests/cpu_backend.rs's work model checks that this kernel, run on
// the CPU backend, walks exactly that.
//
// K and V are double-buffered. Per non-empty key tile kt, in buffer b:
//   wait for K(kt), V(kt); barrier
//   issue K, V of the next non-empty tile into buffer b ^ 1
//   S = Q K^T; mask if PARTIAL; online softmax; O += P V
// The barrier both publishes tile kt (every thread copied part of it) and proves
// every warp has finished tile kt - 1, the last reader of buffer b ^ 1, so one
// barrier per tile suffices and the next tile's loads overlap all of this one's
// math.
#include "block_summary.cuh"
#include "fwd/kernel_traits.cuh"
#include "fwd/mask.cuh"
#include "fwd/smem_layout.cuh"
#include "fwd/softmax.cuh"
#include "fwd/warp_gemm.cuh"

namespace maskattn {
namespace fwd {

// Per-CTA values written once and read back from shared memory by the key loop
// and the epilogue: held in registers across the loop, they would compete with S
// and O for the 255 a thread has.
template <typename Elem, int BM>
struct CtaState {
    TileIntervals<BM> intervals;
    MaskattnTileSummary summary;
    const Elem *k, *v;  // this (batch, kv head)'s K and V, row 0
    Elem *o;            // this (batch, head)'s O, row m0
    float *lse;         // this (batch, head)'s LSE, row m0
    const uint8_t *selected;  // block selection row of this (batch, head, query tile), or null
    int32_t rows;       // query rows of the tile inside len_q
};

template <class Traits>
__device__ __forceinline__ void attention_tile(const MaskattnFwdParams &p) {
    using Elem = typename Traits::Elem;
    constexpr int D = Traits::kHeadDim, kThreads = Traits::kThreads;
    constexpr int BM = Traits::kBlockM, BN = Traits::kBlockN;
    constexpr int MF = Traits::kMFrags, NF = Traits::kNFrags, DF = Traits::kDFrags;
    constexpr int kMinCols = kClassMinHeadDim<D>;
    using QTile = SwizzledTile<BM, D>;
    using KVTile = SwizzledTile<BN, D>;
    static_assert(BM == MASKATTN_SELECT_BLOCK && MASKATTN_SELECT_BLOCK % BN == 0,
                  "a (query tile, key tile) pair lies inside one selection block");

    // Dynamic shared memory only (MASKATTN_FWD_SMEM_* bytes): Q | K0 | V0 | K1 | V1 | CtaState.
    unsigned char *const fwd_smem = dynamic_smem();
    constexpr uint32_t kBufferBytes = 2 * KVTile::kBytes;  // one K and one V tile
    static_assert(QTile::kBytes + 2 * kBufferBytes == Traits::kTileBytes, "tiles as params.h counts them");
    static_assert(sizeof(CtaState<Elem, BM>) <= Traits::kCtaStateBytes, "CtaState fits its reservation");
    CtaState<Elem, BM> &cta = *reinterpret_cast<CtaState<Elem, BM> *>(fwd_smem + Traits::kTileBytes);
    const uint32_t sQ = smem_u32(fwd_smem), sK = sQ + QTile::kBytes, sV = sK + KVTile::kBytes;
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;

    {
        const int32_t h = blockIdx.x % p.heads_q, b = blockIdx.x / p.heads_q;
        const int32_t h_kv = h / (p.heads_q / p.heads_kv);
        const int32_t m0 = p.tile_order[blockIdx.y] * BM;
        const int32_t rows = min(BM, p.len_q - m0);
        const Elem *q = static_cast<const Elem *>(p.q) + b * p.q_batch_stride + h * p.q_head_stride;
        load_tile_async<QTile, kThreads, kMinCols>(sQ, q, p.q_row_stride, m0, p.len_q, p.head_dim, tid);
        cp_async_commit();

        if (tid == 0) {
            cta.k = static_cast<const Elem *>(p.k) + b * p.k_batch_stride + h_kv * p.k_head_stride;
            cta.v = static_cast<const Elem *>(p.v) + b * p.v_batch_stride + h_kv * p.v_head_stride;
            cta.o = static_cast<Elem *>(p.o) + b * p.o_batch_stride + h * p.o_head_stride + int64_t(m0) * p.o_row_stride;
            cta.lse = p.lse + (int64_t(b) * p.heads_q + h) * p.len_q + m0;
            cta.rows = rows;
            // A query tile is one selection block row (BM == MASKATTN_SELECT_BLOCK).
            cta.selected = p.block_select == nullptr
                               ? nullptr
                               : p.block_select + ((int64_t(b) * p.heads_q + h) * gridDim.y + m0 / BM) * p.select_k_blocks;
        }
        cta.intervals.load(p.intervals, m0, p.len_q, tid, kThreads);
        // Summarized while Q is in flight; the scratch lives in the K buffers, not yet in use.
        const MaskattnTileSummary summary =
            block_summary(p.intervals, m0, m0 + rows, reinterpret_cast<MaskattnTileSummary *>(fwd_smem + QTile::kBytes));
        if (tid == 0) cta.summary = summary;
        __syncthreads();
    }

    // K and V of key tile kt into buffer buf, as one cp.async group.
    auto load_kv = [&](int32_t kt, uint32_t buf) {
        load_tile_async<KVTile, kThreads, kMinCols>(sK + buf * kBufferBytes, cta.k, p.k_row_stride, kt * BN, p.len_k,
                                                    p.head_dim, tid);
        load_tile_async<KVTile, kThreads, kMinCols>(sV + buf * kBufferBytes, cta.v, p.v_row_stride, kt * BN, p.len_k,
                                                    p.head_dim, tid);
        cp_async_commit();
    };

    int32_t kt, kt_end, cls = MASKATTN_TILE_EMPTY;
    key_tile_range(cta.summary, BN, &kt, &kt_end);
    kt = next_key_tile(cta.summary, cta.selected, kt, kt_end, BN, cls);
    uint32_t buf = 0;
    if (kt < kt_end) load_kv(kt, buf);

    // Lane's rows in the mma layouts: row_of(mf, half) of the tile.
    auto row_of = [&](int mf, int half) { return warp * Traits::kWarpRows + mf * 16 + half * 8 + lane / 4; };
    const LdsmAddr<QTile> q_frag = ldsm_a_order<QTile>(sQ, warp * Traits::kWarpRows, lane);
    const LdsmAddr<KVTile> k_frag = ldsm_b_order<KVTile>(sK, lane);
    const LdsmAddr<KVTile> v_frag = ldsm_a_order<KVTile>(sV, 0, lane);

    float acc[MF][DF][4];
#pragma unroll
    for (int mf = 0; mf < MF; ++mf)
#pragma unroll
        for (int df = 0; df < DF; ++df)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[mf][df][e] = 0.f;
    OnlineSoftmax<MF> softmax;

    while (kt < kt_end) {
        trace_key_tile(cls);
        cp_async_wait<0>();
        __syncthreads();
        int32_t next_cls = MASKATTN_TILE_EMPTY;
        const int32_t next = next_key_tile(cta.summary, cta.selected, kt + 1, kt_end, BN, next_cls);
        if (next < kt_end) load_kv(next, buf ^ 1);

        float s[MF][NF][4];
#pragma unroll
        for (int mf = 0; mf < MF; ++mf)
#pragma unroll
            for (int nf = 0; nf < NF; ++nf)
#pragma unroll
                for (int e = 0; e < 4; ++e) s[mf][nf][e] = 0.f;
        gemm_qk<Elem, D>(s, q_frag, k_frag.shifted(buf * kBufferBytes));
        if (cls == MASKATTN_TILE_PARTIAL) cta.intervals.apply(s, row_of, kt * BN, lane);
        softmax.update(s, acc, p.scale_log2);
        gemm_pv<Elem>(acc, s, v_frag.shifted(buf * kBufferBytes));

        kt = next;
        cls = next_cls;
        buf ^= 1;
    }

    // O goes out through the Q buffer. Each warp rewrites only its own rows, which
    // only it has read; the barrier covers a CTA that walked no tile, whose Q copy
    // (all threads write all rows) may still be landing.
    cp_async_wait<0>();
    __syncthreads();

    float inv_sum[MF][2], lse[MF][2];
    softmax.finalize(inv_sum, lse);
    const int32_t rows = cta.rows;
    unsigned char *const sO = fwd_smem;
#pragma unroll
    for (int mf = 0; mf < MF; ++mf)
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const int row = row_of(mf, half);
#pragma unroll
            for (int df = 0; df < DF; ++df)
                *reinterpret_cast<uint32_t *>(sO + QTile::offset(row, df) + 4 * (lane % 4)) =
                    pack2<Elem>(acc[mf][df][2 * half] * inv_sum[mf][half], acc[mf][df][2 * half + 1] * inv_sum[mf][half]);
            if (lane % 4 == 0 && row < rows) cta.lse[row] = lse[mf][half];
        }
    __syncwarp();

    // Read back as the loads write: 8 rows x 4 chunks per warp instruction, each
    // 8-lane phase one chunk column of 8 rows (conflict-free), 64 contiguous bytes
    // per row in global memory; the class's padding columns stay behind.
    Elem *const o = cta.o;
    const int chunks = p.head_dim / 8;
#pragma unroll
    for (int pass = 0; pass < Traits::kWarpRows / 8; ++pass) {
        const int row = warp * Traits::kWarpRows + pass * 8 + lane % 8;
#pragma unroll
        for (int quad = 0; quad < QTile::kChunks / 4; ++quad) {
            const int chunk = quad * 4 + lane / 8;
            const uint4 x = *reinterpret_cast<const uint4 *>(sO + QTile::offset(row, chunk));
            if (row < rows && chunk < chunks) *reinterpret_cast<uint4 *>(o + row * p.o_row_stride + chunk * 8) = x;
        }
    }
}

}  // namespace fwd
}  // namespace maskattn

// One entry point per (element type, head-dim class), all the same template.
#define MASKATTN_FWD_ENTRY(name, Elem, D)                                                                   \
    extern "C" __global__ void __launch_bounds__(maskattn::fwd::FwdTraits<Elem, D>::kThreads,               \
                                                 maskattn::fwd::FwdTraits<Elem, D>::kMinBlocksPerSm)        \
        name(const MaskattnFwdParams p) {                                                                   \
        maskattn::fwd::attention_tile<maskattn::fwd::FwdTraits<Elem, D>>(p);                                \
    }                                                                                                       \
    MASKATTN_REGISTER_KERNEL(name)

MASKATTN_FWD_ENTRY(maskattn_fwd_f16_d64, __half, 64)
MASKATTN_FWD_ENTRY(maskattn_fwd_f16_d96, __half, 96)
MASKATTN_FWD_ENTRY(maskattn_fwd_f16_d128, __half, 128)
MASKATTN_FWD_ENTRY(maskattn_fwd_f16_d256, __half, 256)
MASKATTN_FWD_ENTRY(maskattn_fwd_bf16_d64, __nv_bfloat16, 64)
MASKATTN_FWD_ENTRY(maskattn_fwd_bf16_d96, __nv_bfloat16, 96)
MASKATTN_FWD_ENTRY(maskattn_fwd_bf16_d128, __nv_bfloat16, 128)
MASKATTN_FWD_ENTRY(maskattn_fwd_bf16_d256, __nv_bfloat16, 256)

#undef MASKATTN_FWD_ENTRY
