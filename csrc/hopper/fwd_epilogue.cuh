// The epilogue of the Hopper forward kernel: a consumer warpgroup's O, normalised,
// and the LSE of its rows, stored from the wgmma accumulator layout (lane 4 g + q of
// warp w holds rows 16 w + g and 16 w + g + 8, columns 8 j + 2 q + {0, 1}) straight
// to global memory, rows past len_q skipped.
#pragma once

#include "hopper/fwd_mainloop.cuh"

namespace maskattn {
namespace hopper_fwd {

template <class T>
__device__ __forceinline__ void store(const MaskattnFwdParams &p, const WorkTile &wt, int group, int t,
                                      const ConsumerState<T> &st) {
    using Elem = typename T::Elem;
    constexpr int DF = T::kHeadDim / 8;
    const int lane = t % 32;
    float inv_sum[1][2], lse[1][2];
    st.softmax.finalize(inv_sum, lse);
    const int32_t row0 = consumer_row<T>(wt, group, t);
    Elem *const o = static_cast<Elem *>(p.o) + wt.batch * p.o_batch_stride + wt.head * p.o_head_stride;
    float *const lse_out = p.lse + (int64_t(wt.batch) * p.heads_q + wt.head) * p.len_q;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int32_t row = row0 + 8 * h;
        if (row >= p.len_q) continue;
#pragma unroll
        for (int df = 0; df < DF; ++df)
            *reinterpret_cast<uint32_t *>(o + row * p.o_row_stride + 8 * df + 2 * (lane % 4)) =
                fwd::pack2<Elem>(st.o[0][df][2 * h] * inv_sum[0][h], st.o[0][df][2 * h + 1] * inv_sum[0][h]);
        if (lane % 4 == 0) lse_out[row] = lse[0][h];
    }
}

}  // namespace hopper_fwd
}  // namespace maskattn
