// One block runs a list of tile-mode TMA loads (cp.async.bulk.tensor, completing on
// one mbarrier) from six tensor maps and copies the shared memory they wrote out to
// global memory: the conformance test of the TMA (src/launch/probe_tma.rs). The host
// predicts every byte from the PTX ISA's rules (box traversal, out-of-bounds fill,
// swizzle), so the same loads check the CPU backend's emulation and, on an sm_90
// GPU, the hardware. Nothing here knows a rule; it only issues loads and moves bytes.
#include "params.h"
#include "prims.cuh"

using maskattn::sm90::TensorMap;

// One load of the table: which map, its rank, the byte offset of its destination in
// the image (a multiple of 1024, so that the swizzle patterns, which repeat every
// 256, 512 or 1024 bytes of shared address, start at the box's first byte), then
// five coordinates (innermost first; those past the rank are 0).
constexpr int kLoadWords = 8;

template <int Rank>
__device__ __forceinline__ void load(uint32_t dst, const TensorMap *map, uint32_t bar, const int32_t *c) {
    int32_t coords[Rank];
    for (int i = 0; i < Rank; ++i) coords[i] = c[i];
    maskattn::sm90::tma_load<Rank>(dst, map, bar, coords);
}

// map0..map5: tensor maps (the host encodes them with Backend::tensor_map);
// loads [n_loads][8]: map index, rank, destination offset, c0..c4; tx_bytes: the
// sum of the loads' box bytes; image_bytes (a multiple of 1024): the shared memory
// the loads write into, zeroed first -> out [image_bytes / 4]: that memory, after
// the mbarrier's phase 0 completed. Dynamic shared memory: image_bytes + 1024 + 8
// (alignment of the image to 1024 bytes, then the mbarrier).
extern "C" __global__ void maskattn_probe_hopper_tma(const __grid_constant__ TensorMap map0,
                                                     const __grid_constant__ TensorMap map1,
                                                     const __grid_constant__ TensorMap map2,
                                                     const __grid_constant__ TensorMap map3,
                                                     const __grid_constant__ TensorMap map4,
                                                     const __grid_constant__ TensorMap map5, const int32_t *loads,
                                                     int32_t n_loads, uint32_t tx_bytes, uint32_t image_bytes,
                                                     uint32_t *out) {
    unsigned char *smem = maskattn::dynamic_smem();
    // The image starts at the first 1024-byte aligned shared address.
    const uint32_t pad = (1024u - maskattn::sm90::smem_u32(smem) % 1024u) % 1024u;
    unsigned char *image = smem + pad;
    const uint32_t image_addr = maskattn::sm90::smem_u32(image);
    const uint32_t bar = image_addr + image_bytes;
    const int tid = threadIdx.x, threads = blockDim.x;

    uint32_t *words = reinterpret_cast<uint32_t *>(image);
    for (uint32_t i = tid; i < image_bytes / 4; i += threads) words[i] = 0;
    // The zeros (generic proxy) before the TMA's writes (async proxy) to the same bytes.
    maskattn::sm90::fence_proxy_async_shared();
    if (tid == 0) {
        maskattn::sm90::mbarrier_init(bar, 1);
        maskattn::sm90::fence_mbarrier_init();
    }
    __syncthreads();

    if (tid == 0) {
        maskattn::sm90::mbarrier_arrive_expect_tx(bar, tx_bytes);
        const TensorMap *maps[6] = {&map0, &map1, &map2, &map3, &map4, &map5};
        for (int l = 0; l < n_loads; ++l) {
            const int32_t *d = loads + kLoadWords * l;
            const TensorMap *map = maps[d[0]];
            const uint32_t dst = image_addr + static_cast<uint32_t>(d[2]);
            switch (d[1]) {
                case 1: load<1>(dst, map, bar, d + 3); break;
                case 2: load<2>(dst, map, bar, d + 3); break;
                case 3: load<3>(dst, map, bar, d + 3); break;
                case 4: load<4>(dst, map, bar, d + 3); break;
                default: load<5>(dst, map, bar, d + 3); break;
            }
        }
    }
    // Phase 0 completes when thread 0 arrived and all tx_bytes landed.
    maskattn::sm90::mbarrier_wait(bar, 0);
    for (uint32_t i = tid; i < image_bytes / 4; i += threads) out[i] = words[i];
}
MASKATTN_REGISTER_KERNEL(maskattn_probe_hopper_tma)
