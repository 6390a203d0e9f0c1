// Backward flash attention under interval masks (FlashAttention-2's backward on
// mma.sync). Its walk of query tiles per key tile is specified on the host by
// src/tiles.rs and checked on the CPU backend by tests/cpu_backend.rs's backward work
// model; its results by the f64 reference (src/reference). Four kernels, launched in this order by src/cuda/backward.rs:
//
// 1. maskattn_bwd_preprocess_*: per (batch, query head, row) D = rowsum(dO * O) and
//    the LSE in base 2 (-inf, a row that sees no key, becomes +inf so that
//    P = 2^(s - lse2) = 0 there), both f32 [B, Hq, Lq_pad] with the padding rows up to
//    a multiple of BLOCK_M holding D = 0 and +inf; in the atomic mode it also zeroes
//    the f32 dQ accumulator [B, Hq, Lq, class D].
// 2. maskattn_bwd_{dt}_d{D} (atomic dQ) or maskattn_bwd_dkdv_{dt}_d{D} (no dQ): one CTA
//    per (batch, kv head, key tile of BLOCK_N keys), launched heaviest first. It loads K
//    and V once and walks, for every query head of the GQA group, the query tiles of
//    the key tile's walk (the hull of the query tiles whose forward key-tile range
//    contains it, computed on the host), classifying each pair with the query tile's
//    summary: EMPTY is skipped without loading Q or dO, FULL runs no mask code, PARTIAL
//    masks per element. Per computed pair, warp w (keys 16 w .. 16 w + 15):
//        S^T = K_w Q^T; mask; P^T = 2^(scale_log2 S^T - lse2)
//        dV_w += P^T dO;  dP^T = V_w dO^T;  dS^T = P^T * (dP^T - D)
//        dK_w += dS^T Q   (scale applied once at the end)
//        atomic mode: dS^T -> shared memory; barrier; dQ(tile) += dS K with f32
//        atomic adds into the accumulator (split over the 8 warps)
//    Q, dO and the rows' data are double-buffered with cp.async: one wait and one
//    barrier per step, then the next non-empty pair's loads are issued into the other
//    buffer so that they overlap this step's five matrix products. The compact
//    configuration (*_compact, for 99 KB of shared memory at D = 96 and 128) has one
//    buffer: the loads are issued after the step's last read of it (in the atomic
//    mode at the dQ product's barrier, so that they overlap that product). dK and dV
//    (summed over the group's query heads in registers, no atomics) are written once.
// 3. maskattn_bwd_dq_convert_*: dQ = scale * accumulator, in the input dtype and layout.
//    Or, in the deterministic mode, maskattn_bwd_dq_{dt}_d{D}: one CTA per (batch, query
//    head, query tile) walking the key tiles exactly as the forward does and
//    recomputing S, P, dP and dS (three matrix products per pair instead of one), no
//    atomics, so every output bit is reproducible.
#include "bwd/kernel_traits.cuh"
#include "bwd/tile_ops.cuh"
#include "fwd/mask.cuh"
#include "fwd/smem_layout.cuh"
#include "fwd/warp_gemm.cuh"

namespace maskattn {
namespace bwd {

template <typename T>
__device__ __forceinline__ const T *tensor_at(const void *base, int32_t b, int32_t h, int64_t batch_stride,
                                              int64_t head_stride) {
    return static_cast<const T *>(base) + int64_t(b) * batch_stride + int64_t(h) * head_stride;
}

template <typename T>
__device__ __forceinline__ T *tensor_at(void *base, int32_t b, int32_t h, int64_t batch_stride, int64_t head_stride) {
    return static_cast<T *>(base) + int64_t(b) * batch_stride + int64_t(h) * head_stride;
}

// Stages a warp's 16 rows of an f32 accumulator (x factor) as Elem in `tile` at rows
// row0 .. row0 + 15 and copies them to rows first_row + row0 + .. of a [L][D] tensor
// (rows at or past end_row and 8-column chunks at or past end_chunk, a class's
// padding, are not written). Only the calling warp touches those rows of the tile, so
// a __syncwarp orders the two halves; the caller makes sure no other warp still reads
// them.
template <class Tile, typename Elem, int DF>
__device__ __forceinline__ void store_warp_rows(unsigned char *tile, const float (&acc)[1][DF][4], float factor,
                                                int row0, Elem *dst, int64_t row_stride, int32_t first_row,
                                                int32_t end_row, int end_chunk, int lane) {
#pragma unroll
    for (int df = 0; df < DF; ++df)
#pragma unroll
        for (int half = 0; half < 2; ++half)
            *reinterpret_cast<uint32_t *>(tile + Tile::offset(row0 + half * 8 + lane / 4, df) + 4 * (lane % 4)) =
                fwd::pack2<Elem>(acc[0][df][2 * half] * factor, acc[0][df][2 * half + 1] * factor);
    __syncwarp();
    // Read back as the loads write: 8 rows x 4 chunks per instruction, conflict-free,
    // 64 contiguous bytes per row in global memory.
#pragma unroll
    for (int pass = 0; pass < 2; ++pass) {
        const int row = row0 + pass * 8 + lane % 8;
#pragma unroll
        for (int quad = 0; quad < DF / 4; ++quad) {
            const int chunk = quad * 4 + lane / 8;
            const uint4 x = *reinterpret_cast<const uint4 *>(tile + Tile::offset(row, chunk));
            if (first_row + row < end_row && chunk < end_chunk)
                *reinterpret_cast<uint4 *>(dst + int64_t(first_row + row) * row_stride + chunk * 8) = x;
        }
    }
}

// ---------------------------------------------------------------------------------
// 2. dK, dV (and with kDq the atomic dQ) of one key tile.
template <class Traits, bool kDq>
__device__ __forceinline__ void key_tile(const MaskattnBwdParams &p) {
    using Elem = typename Traits::Elem;
    using QTile = typename Traits::QTile;
    using KTile = typename Traits::KTile;
    using DsTile = typename Traits::DsTile;
    constexpr int D = Traits::kHeadDim, kThreads = Traits::kThreads;
    constexpr int BM = Traits::kBlockM, BN = Traits::kBlockN;
    constexpr int QF = Traits::kQFrags, DF = Traits::kDFrags, DQF = Traits::kDqFrags;
    constexpr int kMinCols = fwd::kClassMinHeadDim<D>;

    unsigned char *const bwd_smem = dynamic_smem();
    const uint32_t smem = fwd::smem_u32(bwd_smem);
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int col0 = Traits::col0();  // this CTA's output columns: col0 .. col0 + DF * 8 - 1

    const int32_t b = blockIdx.x / p.heads_kv, hk = blockIdx.x % p.heads_kv;
    const int32_t kt = p.k_tile_order[blockIdx.y];
    const int32_t k0 = kt * BN;
    const Walk walk{p.k_tile_walks[2 * kt], p.k_tile_walks[2 * kt + 1], p.heads_q / p.heads_kv};

    // Q, dO and row data of step (query head hi of the group, query tile qt) into
    // buffer buf, closing a cp.async group.
    auto load_step = [&](int32_t hi, int32_t qt, uint32_t buf) {
        const int32_t h = hk * walk.group + hi, m0 = qt * BM;
        const uint32_t dst = smem + Traits::kOffQ + buf * Traits::kQdoBufferBytes;
        fwd::load_tile_async<QTile, kThreads, kMinCols>(dst,
                                                        tensor_at<Elem>(p.q, b, h, p.q_batch_stride, p.q_head_stride),
                                                        p.q_row_stride, m0, p.len_q, p.head_dim, tid);
        fwd::load_tile_async<QTile, kThreads, kMinCols>(dst + QTile::kBytes,
                                                        tensor_at<Elem>(p.d_out, b, h, p.do_batch_stride, p.do_head_stride),
                                                        p.do_row_stride, m0, p.len_q, p.head_dim, tid);
        const int64_t rows = (int64_t(b) * p.heads_q + h) * p.len_q_pad;
        load_row_data_async<BM>(smem + Traits::kOffRows + buf * Traits::kRowBufferBytes, p.intervals,
                                p.lse2 + rows, p.delta + rows, m0, p.len_q, tid);
        fwd::cp_async_commit();
    };

    int32_t hi = 0, qt = walk.begin, cls = MASKATTN_TILE_EMPTY;
    walk.seek(p.q_tile_summaries, kt, BN, hi, qt, cls);
    if (hi < walk.group) {
        // K and V travel in the first step's group.
        fwd::load_tile_async<KTile, kThreads, kMinCols>(smem + Traits::kOffK,
                                                        tensor_at<Elem>(p.k, b, hk, p.k_batch_stride, p.k_head_stride),
                                                        p.k_row_stride, k0, p.len_k, p.head_dim, tid);
        fwd::load_tile_async<KTile, kThreads, kMinCols>(smem + Traits::kOffV,
                                                        tensor_at<Elem>(p.v, b, hk, p.v_batch_stride, p.v_head_stride),
                                                        p.v_row_stride, k0, p.len_k, p.head_dim, tid);
        load_step(hi, qt, 0);
    }

    // ldmatrix lanes: K_w and V_w as A operands (the warp's 16 keys), Q and dO as B
    // operands of S^T and dP^T ([query][d] = n x k) and, transposed and from the
    // slice's first column, of dV and dK ([query][d] = k x n).
    const fwd::LdsmAddr<KTile> k_a = fwd::ldsm_a_order<KTile>(smem + Traits::kOffK, 16 * warp, lane);
    const fwd::LdsmAddr<KTile> v_a = k_a.shifted(KTile::kBytes);
    const fwd::LdsmAddr<QTile> q_b = fwd::ldsm_b_order<QTile>(smem + Traits::kOffQ, lane);
    const fwd::LdsmAddr<QTile> do_b = q_b.shifted(QTile::kBytes);
    const fwd::LdsmAddr<QTile> q_t =
        fwd::ldsm_a_order<QTile>(smem + Traits::kOffQ, 0, lane).shifted(QTile::offset(0, col0 / 8));
    const fwd::LdsmAddr<QTile> do_t = q_t.shifted(QTile::kBytes);

    float dk[1][DF][4], dv[1][DF][4];
#pragma unroll
    for (int df = 0; df < DF; ++df)
#pragma unroll
        for (int e = 0; e < 4; ++e) dk[0][df][e] = dv[0][df][e] = 0.f;

    uint32_t buf = 0;
    while (hi < walk.group) {
        trace_key_tile(cls);  // a (query tile, key tile) pair of the group's walk
        fwd::cp_async_wait<0>();
        __syncthreads();
        int32_t next_hi = hi, next_qt = qt + 1, next_cls = MASKATTN_TILE_EMPTY;
        walk.seek(p.q_tile_summaries, kt, BN, next_hi, next_qt, next_cls);
        const bool more = next_hi < walk.group;  // uniform over the block
        if (Traits::kStages == 2 && more) load_step(next_hi, next_qt, buf ^ 1);

        const uint32_t qdo = buf * Traits::kQdoBufferBytes;
        const unsigned char *row_data = bwd_smem + Traits::kOffRows + buf * Traits::kRowBufferBytes;

        // S^T -> P^T, then dV += P^T dO.
        float st[1][QF][4];
#pragma unroll
        for (int nf = 0; nf < QF; ++nf)
#pragma unroll
            for (int e = 0; e < 4; ++e) st[0][nf][e] = 0.f;
        fwd::gemm_qk<Elem, D>(st, k_a, q_b.shifted(qdo));
        if (cls == MASKATTN_TILE_PARTIAL)
            mask_transposed(st, reinterpret_cast<const int4 *>(row_data), k0 + 16 * warp, lane);
        probabilities_transposed(st, reinterpret_cast<const float *>(row_data + 16 * BM), p.scale_log2, lane);
        fwd::gemm_pv<Elem>(dv, st, do_t.shifted(qdo));

        // dP^T -> dS^T in place of P^T, a half of the queries at a time (16 registers of
        // dP^T live instead of 32, at the cost of reading V_w twice), then dK += dS^T Q.
        constexpr int QH = QF / 2;
#pragma unroll
        for (int part = 0; part < 2; ++part) {
            float dpt[1][QH][4];
#pragma unroll
            for (int nf = 0; nf < QH; ++nf)
#pragma unroll
                for (int e = 0; e < 4; ++e) dpt[0][nf][e] = 0.f;
            fwd::gemm_qk<Elem, D>(dpt, v_a, do_b.shifted(qdo + QTile::offset(part * QH * 8, 0)));
            softmax_grad_transposed<QH>(st, part * QH, dpt,
                                        reinterpret_cast<const float *>(row_data + 20 * BM) + part * QH * 8, lane);
        }
        if constexpr (kDq) store_transposed<DsTile, Elem>(bwd_smem + Traits::kOffDs, st, 16 * warp, lane);
        fwd::gemm_pv<Elem>(dk, st, q_t.shifted(qdo));

        if constexpr (kDq) {
            // dQ(tile) += dS K: warp w takes query rows 16 (w % 4) .. + 15 and kDqCols
            // columns; every warp's dS^T rows must be in shared memory first. The next
            // step's barrier keeps the next dS^T write behind these reads.
            __syncthreads();
            // Past this barrier no warp reads Q, dO or the row data again: a single
            // buffer is refilled here, under the dQ product.
            if (Traits::kStages == 1 && more) load_step(next_hi, next_qt, 0);
            const int dq_row0 = 16 * (warp % Traits::kDqRowGroups);
            const int dq_col0 = Traits::kDqCols * (warp / Traits::kDqRowGroups);
            const fwd::LdsmAddr<DsTile> ds_a = fwd::ldsm_b_order<DsTile>(smem + Traits::kOffDs, lane)
                                                   .shifted(DsTile::offset(0, dq_row0 / 8));
            const fwd::LdsmAddr<KTile> k_t = fwd::ldsm_a_order<KTile>(smem + Traits::kOffK, 0, lane)
                                                  .shifted(KTile::offset(0, (col0 + dq_col0) / 8));
            const int32_t h = hk * walk.group + hi, m0 = qt * BM;
            float *accum = p.dq_accum + ((int64_t(b) * p.heads_q + h) * p.len_q + m0) * D;
            // In chunks of DQC column fragments: fewer accumulators live next to dK, dV.
            constexpr int DQC = DQF % 4 == 0 ? 4 : DQF;
#pragma unroll
            for (int chunk = 0; chunk < DQF / DQC; ++chunk) {
                float dq[DQC][4];
#pragma unroll
                for (int df = 0; df < DQC; ++df)
#pragma unroll
                    for (int e = 0; e < 4; ++e) dq[df][e] = 0.f;
                gemm_ds_k<Elem, BN / 16>(dq, ds_a, k_t.shifted(KTile::offset(0, chunk * DQC)));
                atomic_add_rows<DQC, D>(accum, dq, dq_row0, col0 + dq_col0 + 8 * DQC * chunk, p.len_q - m0, lane);
            }
        } else if (Traits::kStages == 1 && more) {
            __syncthreads();  // every warp is done with Q, dO and the row data
            load_step(next_hi, next_qt, 0);
        }

        hi = next_hi;
        qt = next_qt;
        cls = next_cls;
        buf ^= Traits::kStages - 1;
    }

    // dK and dV leave through the K and V tiles, once no warp reads them any more (the
    // dQ product reads all of K); a CTA that walked nothing writes zeros.
    fwd::cp_async_wait<0>();
    __syncthreads();
    const int t = fresh_thread_index();  // the epilogue needs the loop's registers
    const int end_chunk = p.head_dim / 8 - col0 / 8;
    store_warp_rows<KTile, Elem>(bwd_smem + Traits::kOffK, dk, p.scale, 16 * (t / 32),
                                 tensor_at<Elem>(p.dk, b, hk, p.dk_batch_stride, p.dk_head_stride) + col0,
                                 p.dk_row_stride, k0, p.len_k, end_chunk, t % 32);
    store_warp_rows<KTile, Elem>(bwd_smem + Traits::kOffV, dv, 1.f, 16 * (t / 32),
                                 tensor_at<Elem>(p.dv, b, hk, p.dv_batch_stride, p.dv_head_stride) + col0,
                                 p.dv_row_stride, k0, p.len_k, end_chunk, t % 32);
}

// ---------------------------------------------------------------------------------
// 3b. Deterministic dQ of one query tile, walking key tiles like the forward.
template <class Traits>
__device__ __forceinline__ void dq_query_tile(const MaskattnBwdParams &p) {
    using Elem = typename Traits::Elem;
    using QTile = typename Traits::QTile;
    using KTile = typename Traits::KTile;
    constexpr int D = Traits::kHeadDim, kThreads = Traits::kThreads;
    constexpr int BM = Traits::kBlockM, BN = Traits::kBlockN;
    constexpr int NF = Traits::kNFrags, DF = Traits::kDFrags;
    constexpr int kMinCols = fwd::kClassMinHeadDim<D>;

    unsigned char *const bwd_smem = dynamic_smem();
    const uint32_t smem = fwd::smem_u32(bwd_smem);
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int col0 = Traits::col0();  // this CTA's dQ columns: col0 .. col0 + DF * 8 - 1
    fwd::TileIntervals<BM> &intervals = *reinterpret_cast<fwd::TileIntervals<BM> *>(bwd_smem + Traits::kOffRows);
    MaskattnTileSummary &summary = *reinterpret_cast<MaskattnTileSummary *>(bwd_smem + Traits::kOffCta);
    static_assert(sizeof(fwd::TileIntervals<BM>) == BM * 16 && sizeof(MaskattnTileSummary) <= Traits::kCtaStateBytes,
                  "as params.h counts them");

    const int32_t h = blockIdx.x % p.heads_q, b = blockIdx.x / p.heads_q;
    const int32_t hk = h / (p.heads_q / p.heads_kv);
    const int32_t qt = p.q_tile_order[blockIdx.y], m0 = qt * BM;
    fwd::load_tile_async<QTile, kThreads, kMinCols>(smem + Traits::kOffQ,
                                                    tensor_at<Elem>(p.q, b, h, p.q_batch_stride, p.q_head_stride),
                                                    p.q_row_stride, m0, p.len_q, p.head_dim, tid);
    fwd::load_tile_async<QTile, kThreads, kMinCols>(smem + Traits::kOffDo,
                                                    tensor_at<Elem>(p.d_out, b, h, p.do_batch_stride, p.do_head_stride),
                                                    p.do_row_stride, m0, p.len_q, p.head_dim, tid);
    fwd::cp_async_commit();
    intervals.load(p.intervals, m0, p.len_q, tid, kThreads);
    if (tid == 0) summary = p.dq_tile_summaries[qt];
    // The lane's two rows' base-2 LSE and D (padded rows: +inf and 0).
    float lse2[2], delta[2];
    {
        const int64_t rows = (int64_t(b) * p.heads_q + h) * p.len_q_pad + m0 + 16 * warp + lane / 4;
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            lse2[half] = p.lse2[rows + 8 * half];
            delta[half] = p.delta[rows + 8 * half];
        }
    }
    __syncthreads();

    const Elem *k = tensor_at<Elem>(p.k, b, hk, p.k_batch_stride, p.k_head_stride);
    const Elem *v = tensor_at<Elem>(p.v, b, hk, p.v_batch_stride, p.v_head_stride);
    auto load_kv = [&](int32_t kt, uint32_t buf) {
        const uint32_t dst = smem + Traits::kOffK + buf * Traits::kKvBufferBytes;
        fwd::load_tile_async<KTile, kThreads, kMinCols>(dst, k, p.k_row_stride, kt * BN, p.len_k, p.head_dim, tid);
        fwd::load_tile_async<KTile, kThreads, kMinCols>(dst + KTile::kBytes, v, p.v_row_stride, kt * BN, p.len_k,
                                                        p.head_dim, tid);
        fwd::cp_async_commit();
    };

    int32_t kt, kt_end, cls = MASKATTN_TILE_EMPTY;
    key_tile_range(summary, BN, &kt, &kt_end);
    kt = next_key_tile(summary, kt, kt_end, BN, cls);
    uint32_t buf = 0;
    if (kt < kt_end) load_kv(kt, buf);

    auto row_of = [&](int mf, int half) { return warp * 16 + mf * 16 + half * 8 + lane / 4; };
    const fwd::LdsmAddr<QTile> q_a = fwd::ldsm_a_order<QTile>(smem + Traits::kOffQ, 16 * warp, lane);
    const fwd::LdsmAddr<QTile> do_a = fwd::ldsm_a_order<QTile>(smem + Traits::kOffDo, 16 * warp, lane);
    const fwd::LdsmAddr<KTile> k_b = fwd::ldsm_b_order<KTile>(smem + Traits::kOffK, lane);
    const fwd::LdsmAddr<KTile> v_b = k_b.shifted(KTile::kBytes);
    const fwd::LdsmAddr<KTile> k_t =
        fwd::ldsm_a_order<KTile>(smem + Traits::kOffK, 0, lane).shifted(KTile::offset(0, col0 / 8));

    float dq[1][DF][4];
#pragma unroll
    for (int df = 0; df < DF; ++df)
#pragma unroll
        for (int e = 0; e < 4; ++e) dq[0][df][e] = 0.f;

    while (kt < kt_end) {
        trace_key_tile(cls);
        fwd::cp_async_wait<0>();
        __syncthreads();
        int32_t next_cls = MASKATTN_TILE_EMPTY;
        const int32_t next = next_key_tile(summary, kt + 1, kt_end, BN, next_cls);
        if (next < kt_end) load_kv(next, buf ^ 1);
        const uint32_t kv = buf * Traits::kKvBufferBytes;

        float s[1][NF][4];
#pragma unroll
        for (int nf = 0; nf < NF; ++nf)
#pragma unroll
            for (int e = 0; e < 4; ++e) s[0][nf][e] = 0.f;
        fwd::gemm_qk<Elem, D>(s, q_a, k_b.shifted(kv));
        if (cls == MASKATTN_TILE_PARTIAL) intervals.apply(s, row_of, kt * BN, lane);
#pragma unroll
        for (int nf = 0; nf < NF; ++nf)
#pragma unroll
            for (int e = 0; e < 4; ++e) s[0][nf][e] = fwd::exp2_approx(fmaf(s[0][nf][e], p.scale_log2, -lse2[e / 2]));

        float ds[1][NF][4];
#pragma unroll
        for (int nf = 0; nf < NF; ++nf)
#pragma unroll
            for (int e = 0; e < 4; ++e) ds[0][nf][e] = 0.f;
        fwd::gemm_qk<Elem, D>(ds, do_a, v_b.shifted(kv));
#pragma unroll
        for (int nf = 0; nf < NF; ++nf)
#pragma unroll
            for (int e = 0; e < 4; ++e) ds[0][nf][e] = s[0][nf][e] * (ds[0][nf][e] - delta[e / 2]);
        // dQ += dS K: dS is already the A operand (rows = queries, k = keys), K the
        // [key][d] = k x n operand read transposed.
        fwd::gemm_pv<Elem>(dq, ds, k_t.shifted(kv));

        kt = next;
        cls = next_cls;
        buf ^= 1;
    }

    // dQ leaves through the Q tile: each warp rewrites only its own rows, which only
    // it has read; the barrier covers a CTA that walked no tile, whose Q copy (all
    // threads write all rows) may still be landing.
    fwd::cp_async_wait<0>();
    __syncthreads();
    store_warp_rows<QTile, Elem>(bwd_smem + Traits::kOffQ, dq, p.scale, 16 * warp,
                                 tensor_at<Elem>(p.dq, b, h, p.dq_batch_stride, p.dq_head_stride) + col0,
                                 p.dq_row_stride, m0, p.len_q, p.head_dim / 8 - col0 / 8, lane);
}

// ---------------------------------------------------------------------------------
// 1. and 3a.: row-wise kernels, 16 threads per row, thread c taking the 16-byte chunks
// (8 elements) c and c + 16 of it; chunks past D / 8 idle.
template <typename Elem>
__device__ __forceinline__ float2 to_float2(uint32_t x) {
    if constexpr (std::is_same_v<Elem, __half>) {
        return __half22float2(*reinterpret_cast<const __half2 *>(&x));
    } else {
        return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(&x));
    }
}

template <typename Elem>
__device__ __forceinline__ void preprocess(const MaskattnBwdParams &p) {
    constexpr int kRowThreads = MASKATTN_BWD_ROW_THREADS / MASKATTN_BWD_ROWS_PER_CTA;
    static_assert(kRowThreads * 8 * 2 == MASKATTN_MAX_HEAD_DIM, "two chunks of 8 elements a thread cover D = 256");
    const int lane_chunk = threadIdx.x % kRowThreads;
    const int64_t g = int64_t(blockIdx.x) * MASKATTN_BWD_ROWS_PER_CTA + threadIdx.x / kRowThreads;
    const int64_t total = int64_t(p.batch) * p.heads_q * p.len_q_pad;
    const int64_t bh = g / p.len_q_pad;
    const int32_t row = int32_t(g - bh * p.len_q_pad);
    const int32_t b = int32_t(bh / p.heads_q), h = int32_t(bh - int64_t(b) * p.heads_q);
    const bool valid = g < total && row < p.len_q;
    float acc = 0.f;
#pragma unroll
    for (int c = lane_chunk; c < 2 * kRowThreads; c += kRowThreads) {
        if (!valid) break;
        if (p.dq_accum != nullptr && c < p.dq_accum_cols / 8) {
            float4 *z = reinterpret_cast<float4 *>(p.dq_accum + (bh * p.len_q + row) * p.dq_accum_cols + 8 * c);
            z[0] = make_float4(0.f, 0.f, 0.f, 0.f);
            z[1] = make_float4(0.f, 0.f, 0.f, 0.f);
        }
        if (c >= p.head_dim / 8) continue;
        const uint4 x = *reinterpret_cast<const uint4 *>(
            tensor_at<Elem>(p.d_out, b, h, p.do_batch_stride, p.do_head_stride) + int64_t(row) * p.do_row_stride + 8 * c);
        const uint4 y = *reinterpret_cast<const uint4 *>(
            tensor_at<Elem>(p.o, b, h, p.o_batch_stride, p.o_head_stride) + int64_t(row) * p.o_row_stride + 8 * c);
        const uint32_t xs[4] = {x.x, x.y, x.z, x.w}, ys[4] = {y.x, y.y, y.z, y.w};
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const float2 a = to_float2<Elem>(xs[i]), o = to_float2<Elem>(ys[i]);
            acc = fmaf(a.x, o.x, acc);
            acc = fmaf(a.y, o.y, acc);
        }
    }
#pragma unroll
    for (int m = kRowThreads / 2; m >= 1; m >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, m);
    if (lane_chunk == 0 && g < total) {
        float l2 = CUDART_INF_F;
        if (valid) {
            const float l = p.lse[bh * p.len_q + row];
            l2 = l == -CUDART_INF_F ? CUDART_INF_F : l * CUDART_L2E_F;
        }
        p.delta[g] = valid ? acc : 0.f;
        p.lse2[g] = l2;
    }
}

template <typename Elem>
__device__ __forceinline__ void dq_convert(const MaskattnBwdParams &p) {
    constexpr int kRowThreads = MASKATTN_BWD_ROW_THREADS / MASKATTN_BWD_ROWS_PER_CTA;
    const int64_t g = int64_t(blockIdx.x) * MASKATTN_BWD_ROWS_PER_CTA + threadIdx.x / kRowThreads;
    const int64_t total = int64_t(p.batch) * p.heads_q * p.len_q;
    if (g >= total) return;
    const int64_t bh = g / p.len_q;
    const int32_t row = int32_t(g - bh * p.len_q);
    const int32_t b = int32_t(bh / p.heads_q), h = int32_t(bh - int64_t(b) * p.heads_q);
#pragma unroll
    for (int c = threadIdx.x % kRowThreads; c < 2 * kRowThreads; c += kRowThreads) {
        if (c >= p.head_dim / 8) break;
        const float4 *a = reinterpret_cast<const float4 *>(p.dq_accum + g * p.dq_accum_cols + 8 * c);
        const float4 x = a[0], y = a[1];
        const float s = p.scale;
        const uint4 out = make_uint4(fwd::pack2<Elem>(x.x * s, x.y * s), fwd::pack2<Elem>(x.z * s, x.w * s),
                                     fwd::pack2<Elem>(y.x * s, y.y * s), fwd::pack2<Elem>(y.z * s, y.w * s));
        *reinterpret_cast<uint4 *>(tensor_at<Elem>(p.dq, b, h, p.dq_batch_stride, p.dq_head_stride) +
                                   int64_t(row) * p.dq_row_stride + 8 * c) = out;
    }
}

}  // namespace bwd
}  // namespace maskattn

// Entry points: per (element type, head dim, configuration) for the tile kernels, per
// element type for the row-wise ones. Each states the shared memory params.h gives the
// launcher for it.
#define MASKATTN_BWD_ENTRY(name, Elem, D, BM, Stages, kDq, kSmem)                                            \
    static_assert(maskattn::bwd::BwdTraits<Elem, D, BM, Stages>::kSmemBytes == (kSmem),                      \
                  "params.h: K, V + Stages x (Q, dO) + dS^T + Stages x row data");                            \
    extern "C" __global__ void __launch_bounds__(maskattn::bwd::BwdTraits<Elem, D, BM, Stages>::kThreads,    \
                                                 maskattn::bwd::BwdTraits<Elem, D, BM, Stages>::kMinBlocksPerSm) \
        name(const MaskattnBwdParams p) {                                                                    \
        maskattn::bwd::key_tile<maskattn::bwd::BwdTraits<Elem, D, BM, Stages>, kDq>(p);                      \
    }                                                                                                        \
    MASKATTN_REGISTER_KERNEL(name)

// The main kernel in both modes, in one configuration.
#define MASKATTN_BWD_MAIN(suffix, D, BM, Stages, kSmem)                                                      \
    MASKATTN_BWD_ENTRY(maskattn_bwd_f16_d##D##suffix, __half, D, BM, Stages, true, kSmem)                    \
    MASKATTN_BWD_ENTRY(maskattn_bwd_bf16_d##D##suffix, __nv_bfloat16, D, BM, Stages, true, kSmem)            \
    MASKATTN_BWD_ENTRY(maskattn_bwd_dkdv_f16_d##D##suffix, __half, D, BM, Stages, false, kSmem)              \
    MASKATTN_BWD_ENTRY(maskattn_bwd_dkdv_bf16_d##D##suffix, __nv_bfloat16, D, BM, Stages, false, kSmem)

#define MASKATTN_BWD_DQ_ENTRY(name, Elem, D)                                                                 \
    extern "C" __global__ void __launch_bounds__(maskattn::bwd::BwdDqTraits<Elem, D>::kThreads,              \
                                                 maskattn::bwd::BwdDqTraits<Elem, D>::kMinBlocksPerSm)       \
        name(const MaskattnBwdParams p) {                                                                    \
        maskattn::bwd::dq_query_tile<maskattn::bwd::BwdDqTraits<Elem, D>>(p);                                \
    }                                                                                                        \
    MASKATTN_REGISTER_KERNEL(name)

#define MASKATTN_BWD_ROW_ENTRY(name, fn, Elem)                                                               \
    extern "C" __global__ void __launch_bounds__(MASKATTN_BWD_ROW_THREADS) name(const MaskattnBwdParams p) { \
        maskattn::bwd::fn<Elem>(p);                                                                          \
    }                                                                                                        \
    MASKATTN_REGISTER_KERNEL(name)

MASKATTN_BWD_MAIN(, 64, MASKATTN_BWD_BLOCK_M, 2, MASKATTN_BWD_SMEM_D64)
MASKATTN_BWD_MAIN(, 96, MASKATTN_BWD_BLOCK_M, 2, MASKATTN_BWD_SMEM_D96)
MASKATTN_BWD_MAIN(, 128, MASKATTN_BWD_BLOCK_M, 2, MASKATTN_BWD_SMEM_D128)
MASKATTN_BWD_MAIN(, 256, MASKATTN_BWD_BLOCK_M_D256, 2, MASKATTN_BWD_SMEM_D256)
MASKATTN_BWD_MAIN(_compact, 96, MASKATTN_BWD_COMPACT_BLOCK_M_D96, 1, MASKATTN_BWD_COMPACT_SMEM_D96)
MASKATTN_BWD_MAIN(_compact, 128, MASKATTN_BWD_COMPACT_BLOCK_M_D128, 1, MASKATTN_BWD_COMPACT_SMEM_D128)
MASKATTN_BWD_DQ_ENTRY(maskattn_bwd_dq_f16_d64, __half, 64)
MASKATTN_BWD_DQ_ENTRY(maskattn_bwd_dq_f16_d96, __half, 96)
MASKATTN_BWD_DQ_ENTRY(maskattn_bwd_dq_f16_d128, __half, 128)
MASKATTN_BWD_DQ_ENTRY(maskattn_bwd_dq_f16_d256, __half, 256)
MASKATTN_BWD_DQ_ENTRY(maskattn_bwd_dq_bf16_d64, __nv_bfloat16, 64)
MASKATTN_BWD_DQ_ENTRY(maskattn_bwd_dq_bf16_d96, __nv_bfloat16, 96)
MASKATTN_BWD_DQ_ENTRY(maskattn_bwd_dq_bf16_d128, __nv_bfloat16, 128)
MASKATTN_BWD_DQ_ENTRY(maskattn_bwd_dq_bf16_d256, __nv_bfloat16, 256)
MASKATTN_BWD_ROW_ENTRY(maskattn_bwd_preprocess_f16, preprocess, __half)
MASKATTN_BWD_ROW_ENTRY(maskattn_bwd_preprocess_bf16, preprocess, __nv_bfloat16)
MASKATTN_BWD_ROW_ENTRY(maskattn_bwd_dq_convert_f16, dq_convert, __half)
MASKATTN_BWD_ROW_ENTRY(maskattn_bwd_dq_convert_bf16, dq_convert, __nv_bfloat16)

#undef MASKATTN_BWD_ENTRY
#undef MASKATTN_BWD_MAIN
#undef MASKATTN_BWD_DQ_ENTRY
#undef MASKATTN_BWD_ROW_ENTRY
