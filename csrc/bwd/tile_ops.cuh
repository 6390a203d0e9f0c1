// Building blocks of the backward kernels that the forward's headers do not have:
// the per-element mask and the softmax gradient in the transposed (key-major)
// accumulator layout, the dS^T staging and the dQ = dS K product with its f32 atomic
// adds, the cp.async of a query tile's per-row data, and the walk over (query head,
// query tile) pairs of a key tile.
#pragma once

#include <math_constants.h>

#include "prims.cuh"
#include "fwd/smem_layout.cuh"
#include "mask_tiles.h"

namespace maskattn {
namespace bwd {

// ---------------------------------------------------------------------------------
// Transposed accumulators: st[0][nf] is the m16n8 tile of keys key_base + lane / 4
// (+ 8 for elements 2, 3) and queries 8 nf + 2 * (lane % 4) (+ 1 for elements 1, 3)
// of the query tile. Element e: half = e / 2 selects the key, e % 2 the query.

// Invisible (key, query) pairs get -inf. iv: the query tile's rows' intervals in
// shared memory ([BLOCK_M] int4; rows past len_q hold the empty [0, 0, 0, 0]).
template <int NF>
__device__ __forceinline__ void mask_transposed(float (&st)[1][NF][4], const int4 *iv, int32_t key_base, int lane) {
    const int32_t key0 = key_base + lane / 4;
#pragma unroll
    for (int nf = 0; nf < NF; ++nf)
#pragma unroll
        for (int eq = 0; eq < 2; ++eq) {
            const int4 x = iv[8 * nf + 2 * (lane % 4) + eq];
            const int32_t row[4] = {x.x, x.y, x.z, x.w};
#pragma unroll
            for (int half = 0; half < 2; ++half)
                if (!key_visible(row, key0 + 8 * half)) st[0][nf][2 * half + eq] = -CUDART_INF_F;
        }
}

// S^T (raw scores, -inf where masked) -> P^T = 2^(scale_log2 * s - lse2[query]).
// lse2 is +inf for rows that see no key (and padding rows), so P = 2^-inf = 0 there;
// -inf - lse2 is -inf for any lse2 > -inf, which the preprocessing guarantees.
template <int NF>
__device__ __forceinline__ void probabilities_transposed(float (&st)[1][NF][4], const float *lse2, float scale_log2,
                                                         int lane) {
#pragma unroll
    for (int nf = 0; nf < NF; ++nf) {
        const float2 l = *reinterpret_cast<const float2 *>(lse2 + 8 * nf + 2 * (lane % 4));
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            st[0][nf][2 * half] = fwd::exp2_approx(fmaf(st[0][nf][2 * half], scale_log2, -l.x));
            st[0][nf][2 * half + 1] = fwd::exp2_approx(fmaf(st[0][nf][2 * half + 1], scale_log2, -l.y));
        }
    }
}

// P^T -> dS^T = P^T * (dP^T - delta[query]) in place, for the NH n8 fragments
// nf0 .. nf0 + NH - 1 of pt, whose dP^T is dpt; delta points at query 8 nf0.
template <int NH, int NF>
__device__ __forceinline__ void softmax_grad_transposed(float (&pt)[1][NF][4], int nf0, const float (&dpt)[1][NH][4],
                                                        const float *delta, int lane) {
#pragma unroll
    for (int nf = 0; nf < NH; ++nf) {
        const float2 d = *reinterpret_cast<const float2 *>(delta + 8 * nf + 2 * (lane % 4));
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            float *x = pt[0][nf0 + nf];
            x[2 * half] *= dpt[0][nf][2 * half] - d.x;
            x[2 * half + 1] *= dpt[0][nf][2 * half + 1] - d.y;
        }
    }
}

// Writes dS^T (rounded to Elem) of the warp's 16 keys at rows row0 .. row0 + 15 of a
// [key][query] tile. For each n8 fragment a warp store covers 8 rows x 8 columns: the
// swizzle puts rows r and r + 4 in opposite 16-byte halves of their chunk pair, so the
// 32 lanes hit 32 distinct banks.
template <class Tile, typename Elem, int NF>
__device__ __forceinline__ void store_transposed(unsigned char *tile, const float (&st)[1][NF][4], int row0, int lane) {
#pragma unroll
    for (int nf = 0; nf < NF; ++nf)
#pragma unroll
        for (int half = 0; half < 2; ++half)
            *reinterpret_cast<uint32_t *>(tile + Tile::offset(row0 + half * 8 + lane / 4, nf) + 4 * (lane % 4)) =
                fwd::pack2<Elem>(st[0][nf][2 * half], st[0][nf][2 * half + 1]);
}

// ---------------------------------------------------------------------------------
// acc[df] += dS K for 16 query rows and DF n8 column fragments, over KSTEPS k16 steps
// of keys. dS comes from the [key][query] tile written by store_transposed, read
// transposed: ds addresses it in ldsm_b_order lanes, already shifted to the warp's 16
// query columns, so matrix j of ldmatrix.trans is (queries 0-7 | 8-15) x (keys 0-7 |
// 8-15) in the A order a0..a3. k addresses the K tile in ldsm_a_order lanes, shifted
// to the warp's first column, read transposed like V in the forward's P V.
template <typename Elem, int KSTEPS, int DF, class DsTile, class KTile>
__device__ __forceinline__ void gemm_ds_k(float (&acc)[DF][4], const fwd::LdsmAddr<DsTile> &ds,
                                          const fwd::LdsmAddr<KTile> &k) {
    static_assert(DF % 2 == 0, "ldmatrix.x4 yields two n8 fragments of K");
#pragma unroll
    for (int ks = 0; ks < KSTEPS; ++ks) {
        uint32_t a[4];
        fwd::ldmatrix_x4_trans(a, ds(ks * 16, 0));
#pragma unroll
        for (int dp = 0; dp < DF / 2; ++dp) {
            uint32_t b[4];
            fwd::ldmatrix_x4_trans(b, k(ks * 16, 2 * dp));
            fwd::mma_16816<Elem>(acc[2 * dp], a, b[0], b[1]);
            fwd::mma_16816<Elem>(acc[2 * dp + 1], a, b[2], b[3]);
        }
    }
}

// Adds acc (rows row0 + lane / 4 (+ 8), columns col0 + 8 df + 2 * (lane % 4) (+ 1)) to
// a row-major f32 [rows][D] accumulator of the class's D (a padded column gets the
// zeros of K's zero-filled columns; a runtime row length costs the D = 128 kernel
// spills); rows at or past `rows` are skipped. Hopper has a two-float atomic add (one
// red.v2 for the two adjacent columns of a lane).
template <int DF, int D>
__device__ __forceinline__ void atomic_add_rows(float *accum, const float (&acc)[DF][4], int row0, int col0,
                                                int32_t rows, int lane) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
        const int row = row0 + half * 8 + lane / 4;
        if (row >= rows) continue;
        // A 32-bit offset (rows < 2^16): loop-invariant, it costs the key-tile loop one
        // register instead of a hoisted 64-bit pointer.
        float *dst = accum + (uint32_t(row) * D + uint32_t(col0 + 2 * (lane % 4)));
#pragma unroll
        for (int df = 0; df < DF; ++df) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
            atomicAdd(reinterpret_cast<float2 *>(dst + 8 * df), make_float2(acc[df][2 * half], acc[df][2 * half + 1]));
#else
            atomicAdd(dst + 8 * df, acc[df][2 * half]);
            atomicAdd(dst + 8 * df + 1, acc[df][2 * half + 1]);
#endif
        }
    }
}

// ---------------------------------------------------------------------------------
// A query tile's per-row data for the main kernel, as one part of a cp.async group:
// intervals (16 bytes a row, zero-filled = empty past len_q), then the base-2 LSE and
// D from the preprocessing's padded [len_q_pad] rows (always in bounds). Threads 0 ..
// BM - 1 copy the intervals, BM .. BM + BM/4 - 1 the LSE, the next BM/4 the D.
template <int BM>
__device__ __forceinline__ void load_row_data_async(uint32_t dst, const int32_t *__restrict__ intervals,
                                                    const float *lse2_rows, const float *delta_rows, int32_t m0,
                                                    int32_t len_q, int tid) {
    if (tid < BM) {
        const bool valid = m0 + tid < len_q;
        fwd::cp_async_16(dst + 16 * tid, intervals + 4 * (valid ? int64_t(m0 + tid) : 0), valid);
    } else if (tid < BM + BM / 4) {
        const int c = tid - BM;
        fwd::cp_async_16(dst + 16 * BM + 16 * c, lse2_rows + m0 + 4 * c, true);
    } else if (tid < BM + BM / 2) {
        const int c = tid - BM - BM / 4;
        fwd::cp_async_16(dst + 20 * BM + 16 * c, delta_rows + m0 + 4 * c, true);
    }
}

// The class of key tile kt (width block_n) for query tile qt, from the host's summaries.
__device__ __forceinline__ int32_t classify_query_tile(const MaskattnTileSummary *__restrict__ summaries, int32_t qt,
                                                       int32_t kt, int32_t block_n) {
    MaskattnTileSummary s;
    const int32_t *src = reinterpret_cast<const int32_t *>(summaries + qt);
    int32_t *dst = reinterpret_cast<int32_t *>(&s);
#pragma unroll
    for (int i = 0; i < int(sizeof(MaskattnTileSummary) / sizeof(int32_t)); ++i) dst[i] = __ldg(src + i);
    return classify_tile(s, kt, block_n);
}

// The walk of a key tile: (query head hi of the group, query tile qt in [begin, end)),
// heads outer, query tiles inner, EMPTY pairs skipped. Uniform over the block.
struct Walk {
    int32_t begin, end, group;

    // Moves (hi, qt) to the first non-EMPTY pair at or after it, setting cls; hi ==
    // group when none is left.
    __device__ __forceinline__ void seek(const MaskattnTileSummary *__restrict__ summaries, int32_t kt,
                                         int32_t block_n, int32_t &hi, int32_t &qt, int32_t &cls) const {
        while (hi < group) {
            if (qt >= end) {
                qt = begin;
                ++hi;
                continue;
            }
            cls = classify_query_tile(summaries, qt, kt, block_n);
            if (cls != MASKATTN_TILE_EMPTY) return;
            ++qt;
        }
    }
};

// The first key tile in [kt, end) that classify_key_tile does not call EMPTY for the
// summary, and its class; end when none is left (the forward's walk).
__device__ __forceinline__ int32_t next_key_tile(const MaskattnTileSummary &summary, int32_t kt, int32_t end,
                                                 int32_t block_n, int32_t &cls) {
    for (; kt < end; ++kt) {
        cls = classify_tile(summary, kt, block_n);
        if (cls != MASKATTN_TILE_EMPTY) break;
    }
    return kt;
}

}  // namespace bwd
}  // namespace maskattn
