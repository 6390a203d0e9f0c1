// Device-side reduction of a query tile's row intervals into a MaskattnTileSummary
// with the merge of mask_tiles.h: every thread folds a strided subset of the rows,
// then warps combine by shuffles and warp 0 combines the warps.
#pragma once

#include "mask_tiles.h"
#include "prims.cuh"

namespace maskattn {

__device__ __forceinline__ MaskattnTileSummary shfl_xor_summary(const MaskattnTileSummary &s, int lane_mask) {
    MaskattnTileSummary o;
    const int32_t *src = reinterpret_cast<const int32_t *>(&s);
    int32_t *dst = reinterpret_cast<int32_t *>(&o);
#pragma unroll
    for (int i = 0; i < int(sizeof(MaskattnTileSummary) / sizeof(int32_t)); ++i)
        dst[i] = __shfl_xor_sync(0xffffffffu, src[i], lane_mask);
    return o;
}

// Summary of rows [row_begin, row_end) of intervals[len_q][4]; every thread of the
// block gets the result. All threads must call it; `scratch` holds one summary per
// warp. blockDim.x must be a multiple of 32.
__device__ MaskattnTileSummary block_summary(const int32_t *__restrict__ intervals, int32_t row_begin,
                                             int32_t row_end, MaskattnTileSummary *scratch) {
    MaskattnTileSummary s = summary_empty();
    for (int32_t r = row_begin + int32_t(threadIdx.x); r < row_end; r += int32_t(blockDim.x)) {
        const int4 iv = __ldg(reinterpret_cast<const int4 *>(intervals) + r);
        const int32_t row[4] = {iv.x, iv.y, iv.z, iv.w};
        summary_add_row(s, row);
    }
#pragma unroll
    for (int m = 16; m >= 1; m >>= 1) s = summary_merge(s, shfl_xor_summary(s, m));
    const int warp = threadIdx.x / 32, warps = blockDim.x / 32;
    if (threadIdx.x % 32 == 0) scratch[warp] = s;
    __syncthreads();
    MaskattnTileSummary all = summary_empty();
    for (int w = 0; w < warps; ++w) all = summary_merge(all, scratch[w]);
    __syncthreads();  // scratch may be reused right after
    return all;
}

}  // namespace maskattn
