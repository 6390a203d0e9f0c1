// The per-element mask of PARTIAL key tiles, applied to S in the mma accumulator
// layout with maskattn::key_visible, the function the host tests.
#pragma once

#include <math_constants.h>

#include "mask_tiles.h"

namespace maskattn {
namespace fwd {

// The half-row (mf, half) of s, in the mma accumulator layout (keys key0 + 8 nf +
// 2 * (lane % 4) + {0, 1}), against its row's intervals iv: invisible pairs get
// -inf, which the softmax turns into probability 0. wgmma's accumulator repeats the
// same layout along N, so the Hopper kernel masks with it too.
template <int MF, int NF>
__device__ __forceinline__ void mask_row(float (&s)[MF][NF][4], int mf, int half, const int32_t (&iv)[4], int32_t key0,
                                         int lane) {
#pragma unroll
    for (int nf = 0; nf < NF; ++nf)
#pragma unroll
        for (int e = 0; e < 2; ++e)
            if (!key_visible(iv, key0 + 8 * nf + 2 * (lane % 4) + e)) s[mf][nf][2 * half + e] = -CUDART_INF_F;
}

// The intervals of the tile's rows, staged in shared memory once per CTA: they
// are read only by PARTIAL tiles, and kept in registers they would cost 16 per
// lane for the whole key loop. Rows past len_q get the empty interval, so they
// are fully masked in PARTIAL tiles (and never stored).
template <int BM>
struct TileIntervals {
    int4 rows[BM];

    // Every thread calls it; visible after the next __syncthreads().
    __device__ __forceinline__ void load(const int32_t *__restrict__ intervals, int32_t m0, int32_t len_q, int tid,
                                         int threads) {
        for (int r = tid; r < BM; r += threads)
            rows[r] = m0 + r < len_q ? __ldg(reinterpret_cast<const int4 *>(intervals) + m0 + r) : make_int4(0, 0, 0, 0);
    }

    // mask_row on every half-row of s, row_of(mf, half) giving its row of the tile.
    template <int MF, int NF, class RowOf>
    __device__ __forceinline__ void apply(float (&s)[MF][NF][4], RowOf row_of, int32_t key0, int lane) const {
#pragma unroll
        for (int mf = 0; mf < MF; ++mf)
#pragma unroll
            for (int half = 0; half < 2; ++half) {
                const int4 x = rows[row_of(mf, half)];
                const int32_t iv[4] = {x.x, x.y, x.z, x.w};
                mask_row(s, mf, half, iv, key0, lane);
            }
    }
};

}  // namespace fwd
}  // namespace maskattn
