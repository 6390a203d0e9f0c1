// The persistent tile scheduler of the Hopper forward kernel: the grid is about one
// CTA per SM, and CTA x takes work items x, x + gridDim.x, x + 2 gridDim.x, ...
// Work item w is query tile tile_order[w / (B * Hq)] of (batch, head) w % (B * Hq):
// the host orders the query tiles heaviest first, so every CTA starts on heavy
// tiles and the light ones fill the tail, as the launch order of the one-CTA-per-tile
// kernel does. Static: producer and consumers compute the same sequence with no
// communication.
#pragma once

#include "mask_tiles.h"

namespace maskattn {
namespace hopper_fwd {

struct WorkTile {
    int32_t batch, head;
    int32_t m0;  // first query row
};

// The launch plan keeps query tiles x B x Hq below 2^31.
struct TileScheduler {
    int32_t heads, bh_count, items;

    __device__ __forceinline__ TileScheduler(const MaskattnFwdParams &p, int32_t block_m)
        : heads(p.heads_q), bh_count(p.batch * p.heads_q), items(div_ceil(p.len_q, block_m) * p.batch * p.heads_q) {}

    __device__ __forceinline__ int32_t first() const { return int32_t(blockIdx.x); }
    __device__ __forceinline__ int32_t next(int32_t w) const { return w + int32_t(gridDim.x); }
    __device__ __forceinline__ bool valid(int32_t w) const { return w < items; }

    __device__ __forceinline__ WorkTile tile(const MaskattnFwdParams &p, int32_t w, int32_t block_m) const {
        const int32_t bh = w % bh_count;
        return WorkTile{bh / heads, bh % heads, __ldg(p.tile_order + w / bh_count) * block_m};
    }
};

}  // namespace hopper_fwd
}  // namespace maskattn
