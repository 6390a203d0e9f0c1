// The two matrix products of a key tile, per warp, on mma.sync m16n8k16 with
// f32 accumulators: S = Q K^T with both operands from shared memory, and
// O += P V with P taken straight from the S accumulators.
#pragma once

#include "fwd/smem_layout.cuh"

namespace maskattn {
namespace fwd {

// s[mf][nf] += Q K^T for the warp's m16 fragment mf and keys 8 nf .. 8 nf + 7 of
// the tile, over the whole head dim. q addresses the warp's rows (A order), k the
// key tile (B order).
template <typename Elem, int D, int MF, int NF, class QTile, class KTile>
__device__ __forceinline__ void gemm_qk(float (&s)[MF][NF][4], const LdsmAddr<QTile> &q, const LdsmAddr<KTile> &k) {
    static_assert(NF % 2 == 0, "ldmatrix.x4 yields two n8 fragments of K");
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks) {
        uint32_t a[MF][4];
#pragma unroll
        for (int mf = 0; mf < MF; ++mf) ldmatrix_x4(a[mf], q(mf * 16, 2 * ks));
#pragma unroll
        for (int nb = 0; nb < NF / 2; ++nb) {
            uint32_t b[4];
            ldmatrix_x4(b, k(nb * 16, 2 * ks));
#pragma unroll
            for (int mf = 0; mf < MF; ++mf) {
                mma_16816<Elem>(s[mf][2 * nb], a[mf], b[0], b[1]);
                mma_16816<Elem>(s[mf][2 * nb + 1], a[mf], b[2], b[3]);
            }
        }
    }
}

// acc[mf][df] += P V, P = p (probabilities in S's accumulator layout) rounded to
// Elem, v addressing the V tile (A order, read transposed). The accumulators of
// n8 fragments 2 kk and 2 kk + 1 hold, per lane, exactly the elements the A
// fragment of k16 step kk wants (rows lane / 4 and + 8, columns 2 * (lane % 4) +
// {0, 1} and + 8), so P never leaves registers.
template <typename Elem, int MF, int NF, int DF, class VTile>
__device__ __forceinline__ void gemm_pv(float (&acc)[MF][DF][4], const float (&p)[MF][NF][4],
                                        const LdsmAddr<VTile> &v) {
    static_assert(NF % 2 == 0 && DF % 2 == 0, "k16 steps over keys, ldmatrix.x4 yields two n8 fragments of V");
#pragma unroll
    for (int kk = 0; kk < NF / 2; ++kk) {
        uint32_t a[MF][4];
#pragma unroll
        for (int mf = 0; mf < MF; ++mf) {
            a[mf][0] = pack2<Elem>(p[mf][2 * kk][0], p[mf][2 * kk][1]);
            a[mf][1] = pack2<Elem>(p[mf][2 * kk][2], p[mf][2 * kk][3]);
            a[mf][2] = pack2<Elem>(p[mf][2 * kk + 1][0], p[mf][2 * kk + 1][1]);
            a[mf][3] = pack2<Elem>(p[mf][2 * kk + 1][2], p[mf][2 * kk + 1][3]);
        }
#pragma unroll
        for (int dp = 0; dp < DF / 2; ++dp) {
            uint32_t b[4];
            ldmatrix_x4_trans(b, v(kk * 16, 2 * dp));
#pragma unroll
            for (int mf = 0; mf < MF; ++mf) {
                mma_16816<Elem>(acc[mf][2 * dp], a[mf], b[0], b[1]);
                mma_16816<Elem>(acc[mf][2 * dp + 1], a[mf], b[2], b[3]);
            }
        }
    }
}

}  // namespace fwd
}  // namespace maskattn
