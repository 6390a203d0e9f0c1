// Forward flash attention under interval masks on Hopper (sm_90a): the same
// semantics as csrc/flash_fwd.cu (interval masks, the optional block selection,
// GQA, LSE), built the FlashAttention-3 way: a producer warp loads Q and the walked
// K/V tiles through TMA into a ring of mbarrier-guarded stages, two consumer
// warpgroups multiply them with wgmma (S = Q K^T from shared memory, O += P V with P
// from registers) and overlap each tile's softmax with the tensor cores, and
// setmaxnreg moves the producer's registers to the consumers. Persistent CTAs take
// (batch, head, query tile) work items heaviest first (hopper/tile_scheduler.cuh).
//
//   hopper/fwd_traits.cuh     tile sizes, roles, shared-memory layout
//   hopper/tile_scheduler.cuh work items
//   hopper/fwd_mainloop.cuh   producer, consumers, the stage ring
//   hopper/fwd_epilogue.cuh   O and LSE out
//   fwd/mask.cuh, fwd/softmax.cuh (shared with the mma.sync kernel)
#include "hopper/fwd_epilogue.cuh"

namespace maskattn {
namespace hopper_fwd {

template <class T>
__device__ __forceinline__ void forward(const TensorMap *q_map, const TensorMap *k_map, const TensorMap *v_map,
                                        const MaskattnFwdParams &p) {
    const Smem<T> sm;
    constexpr int kConsumerWarps = 4 * T::kConsumers;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (threadIdx.x == 0) sm.init_barriers(kConsumerWarps);
    __syncthreads();

    const TileScheduler sched(p, T::kBlockM);
    Ring<T::kStages> ring;
    int32_t n = 0;
    if (warp < 4) {
        sm90::setmaxnreg_dec<T::kProducerRegs>();
        if (warp == 0)
            for (int32_t w = sched.first(); sched.valid(w); w = sched.next(w), ++n)
                produce(sm, p, q_map, k_map, v_map, sched.tile(p, w, T::kBlockM), n, ring, lane);
        return;
    }
    sm90::setmaxnreg_inc<T::kConsumerRegs>();
    const int group = warp / 4 - 1, t = threadIdx.x % 128;
    ConsumerState<T> st;
    for (int32_t w = sched.first(); sched.valid(w); w = sched.next(w), ++n) {
        const WorkTile wt = sched.tile(p, w, T::kBlockM);
        consume(sm, p, wt, n, ring, group, t, st);
        store(p, wt, group, t, st);
    }
}

}  // namespace hopper_fwd
}  // namespace maskattn

// One entry point per (element type, head dim), all the same template.
#define MASKATTN_HOPPER_FWD_ENTRY(name, Elem, D)                                                               \
    extern "C" __global__ void __launch_bounds__(MASKATTN_HOPPER_FWD_THREADS, 1)                               \
        name(const __grid_constant__ maskattn::sm90::TensorMap q, const __grid_constant__ maskattn::sm90::TensorMap k, \
             const __grid_constant__ maskattn::sm90::TensorMap v, const __grid_constant__ MaskattnFwdParams p) {  \
        maskattn::hopper_fwd::forward<maskattn::hopper_fwd::Traits<Elem, D>>(&q, &k, &v, p);                    \
    }                                                                                                           \
    MASKATTN_REGISTER_KERNEL(name)

MASKATTN_HOPPER_FWD_ENTRY(maskattn_hopper_fwd_f16_d64, __half, 64)
MASKATTN_HOPPER_FWD_ENTRY(maskattn_hopper_fwd_f16_d96, __half, 96)
MASKATTN_HOPPER_FWD_ENTRY(maskattn_hopper_fwd_f16_d128, __half, 128)
MASKATTN_HOPPER_FWD_ENTRY(maskattn_hopper_fwd_bf16_d64, __nv_bfloat16, 64)
MASKATTN_HOPPER_FWD_ENTRY(maskattn_hopper_fwd_bf16_d96, __nv_bfloat16, 96)
MASKATTN_HOPPER_FWD_ENTRY(maskattn_hopper_fwd_bf16_d128, __nv_bfloat16, 128)

#undef MASKATTN_HOPPER_FWD_ENTRY
