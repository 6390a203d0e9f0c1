// Device-side reduction of a query tile's row intervals into a MaskattnTileSummary
// with the merge of mask_tiles.h (every thread folds a strided subset of the rows,
// then warps combine by shuffles and, for a block, the warps' results in shared
// memory), and the forward kernels' walk of the key tiles it leaves.
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

// Summary of rows [row_begin, row_end) of intervals[len_q][4], reduced by one warp:
// every lane of it must call it and gets the result.
__device__ __forceinline__ MaskattnTileSummary warp_summary(const int32_t *__restrict__ intervals, int32_t row_begin,
                                                            int32_t row_end, int lane, int lane_stride = 32) {
    MaskattnTileSummary s = summary_empty();
    for (int32_t r = row_begin + lane; r < row_end; r += lane_stride) {
        const int4 iv = __ldg(reinterpret_cast<const int4 *>(intervals) + r);
        const int32_t row[4] = {iv.x, iv.y, iv.z, iv.w};
        summary_add_row(s, row);
    }
#pragma unroll
    for (int m = 16; m >= 1; m >>= 1) s = summary_merge(s, shfl_xor_summary(s, m));
    return s;
}

// Summary of rows [row_begin, row_end) of intervals[len_q][4]; every thread of the
// block gets the result. All threads must call it; `scratch` holds one summary per
// warp. blockDim.x must be a multiple of 32.
__device__ MaskattnTileSummary block_summary(const int32_t *__restrict__ intervals, int32_t row_begin,
                                             int32_t row_end, MaskattnTileSummary *scratch) {
    const int warp = threadIdx.x / 32, warps = blockDim.x / 32;
    const MaskattnTileSummary s =
        warp_summary(intervals, row_begin + 32 * warp, row_end, threadIdx.x % 32, int32_t(blockDim.x));
    if (threadIdx.x % 32 == 0) scratch[warp] = s;
    __syncthreads();
    MaskattnTileSummary all = summary_empty();
    for (int w = 0; w < warps; ++w) all = summary_merge(all, scratch[w]);
    __syncthreads();  // scratch may be reused right after
    return all;
}

// The first key tile in [kt, end) that classify_key_tile does not call EMPTY and
// whose 128-key block the selection row keeps (no selection: every block), and its
// class; end when none is left. Uniform over the threads that call it.
__device__ __forceinline__ int32_t next_key_tile(const MaskattnTileSummary &summary, const uint8_t *selected,
                                                 int32_t kt, int32_t end, int32_t block_n, int32_t &cls) {
    for (; kt < end; ++kt) {
        if (selected != nullptr && !__ldg(selected + int64_t(kt) * block_n / MASKATTN_SELECT_BLOCK)) continue;
        cls = classify_tile(summary, kt, block_n);
        if (cls != MASKATTN_TILE_EMPTY) break;
    }
    return kt;
}

}  // namespace maskattn
