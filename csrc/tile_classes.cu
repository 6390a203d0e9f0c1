// The tile classes of a whole mask, computed on the device with the same header the
// attention kernels use: the GPU's view of the schedule, compared with the host's
// in tests/gpu_smoke.rs.
#include "block_summary.cuh"

// One block per query tile; classes[qt * n_key_tiles + kt] gets MASKATTN_TILE_*.
// Tiles outside the walked range are EMPTY without classification, as in the kernels.
extern "C" __global__ void maskattn_tile_classes(const int32_t *__restrict__ intervals, int32_t len_q,
                                                 int32_t len_k, int32_t block_m, int32_t block_n,
                                                 int32_t *__restrict__ classes) {
    MASKATTN_SHARED(MaskattnTileSummary[32], scratch);
    const int32_t qt = blockIdx.x;
    const int32_t row_end = qt < len_q / block_m ? (qt + 1) * block_m : len_q;
    const MaskattnTileSummary s = maskattn::block_summary(intervals, qt * block_m, row_end, scratch);
    int32_t begin, end;
    maskattn::key_tile_range(s, block_n, &begin, &end);
    const int32_t n_key_tiles = maskattn::div_ceil(len_k, block_n);
    for (int32_t kt = threadIdx.x; kt < n_key_tiles; kt += blockDim.x) {
        const int32_t cls = (kt >= begin && kt < end)
                                ? maskattn::classify_tile(s, kt, block_n)
                                : MASKATTN_TILE_EMPTY;
        classes[int64_t(qt) * n_key_tiles + kt] = cls;
    }
}
MASKATTN_REGISTER_KERNEL(maskattn_tile_classes)
