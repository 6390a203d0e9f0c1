// The smallest kernel built from every sm_90 primitive the Hopper attention kernel
// needs: C = A B^T (A [M, K], B [N, K], both K contiguous, f32 C [M, N]) with a
// producer warp loading A and B tiles through TMA into a two-stage ring and a
// consumer warpgroup multiplying them with wgmma, the stages handed over with
// mbarriers: `full` (the producer's expect_tx + the copies' bytes) and `empty` (one
// arrival per consumer warp once its wgmma.wait_group retired the reads of the
// stage). It is the CPU backend's test of those primitives working together
// (tests/hopper_gemm.rs), and its sm_90a SASS the check that they compile to HGMMA,
// UTMALDG and SYNCS instructions.
#include "hopper/smem_desc.cuh"
#include "prims.cuh"

namespace maskattn {
namespace hopper_gemm {

using namespace ::maskattn::sm90;

constexpr int kBlockM = 64;  // one wgmma m64 per consumer warpgroup
constexpr int kBlockK = 64;  // 128 bytes of 16-bit elements: one 128-byte swizzled row
constexpr int kStages = 2;
constexpr int kThreads = 256;  // warpgroup 0 produces (warp 0 issues), warpgroup 1 consumes

template <int BlockN>
struct SmemLayout {
    static constexpr int kA = kBlockM * kBlockK * 2;  // bytes of one A stage
    static constexpr int kB = BlockN * kBlockK * 2;
    static constexpr int kStage = kA + kB;
    // Stages first, 1,024-byte aligned (the 128-byte swizzle's pattern: the kernel
    // rounds the dynamic buffer's start up; the launch plan adds the 1,024 bytes that
    // may take), then the mbarriers: full[kStages], empty[kStages].
    static constexpr int kBarriers = kStages * kStage;
};

// The wgmma descriptor of a K-major tile of 128-byte rows, 128-byte swizzle: 8-row
// groups 1,024 bytes apart (SBO); LBO is unused for swizzled K-major operands.
__device__ __forceinline__ uint64_t tile_desc(uint32_t addr) {
    return make_smem_desc(addr, 16, 1024, SmemSwizzle::k128B);
}

template <typename Elem, int BlockN>
__device__ __forceinline__ void gemm(const TensorMap *a_map, const TensorMap *b_map, float *c, int m, int n, int k) {
    using L = SmemLayout<BlockN>;
    const uint32_t base = (smem_u32(dynamic_smem()) + 1023) & ~1023u;
    const uint32_t full = base + L::kBarriers, empty = full + 8 * kStages;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int m0 = blockIdx.y * kBlockM, n0 = blockIdx.x * BlockN;
    const int k_tiles = (k + kBlockK - 1) / kBlockK;

    if (threadIdx.x == 0) {
        for (int s = 0; s < kStages; ++s) {
            mbarrier_init(full + 8 * s, 1);
            mbarrier_init(empty + 8 * s, 4);
        }
        fence_mbarrier_init();
    }
    __syncthreads();

    if (warp < 4) {
        setmaxnreg_dec<40>();
        if (warp == 0 && elect_one()) {
            for (int kt = 0; kt < k_tiles; ++kt) {
                const int s = kt % kStages;
                // Round r of a stage waits for the consumers' release of round r - 1;
                // the first round's wait (parity 1 of a fresh barrier) passes at once.
                mbarrier_wait(empty + 8 * s, ((kt / kStages) & 1) ^ 1);
                mbarrier_arrive_expect_tx(full + 8 * s, L::kStage);
                const int32_t a_at[2] = {kt * kBlockK, m0}, b_at[2] = {kt * kBlockK, n0};
                tma_load<2>(base + s * L::kStage, a_map, full + 8 * s, a_at);
                tma_load<2>(base + s * L::kStage + L::kA, b_map, full + 8 * s, b_at);
            }
        }
        return;
    }

    setmaxnreg_inc<232>();
    float acc[BlockN / 2];
    for (int i = 0; i < BlockN / 2; ++i) acc[i] = 0.f;
    for (int kt = 0; kt < k_tiles; ++kt) {
        const int s = kt % kStages;
        mbarrier_wait(full + 8 * s, (kt / kStages) & 1);
        const uint32_t a = base + s * L::kStage, b = a + L::kA;
        wgmma_fence();
        for (int kk = 0; kk < kBlockK / 16; ++kk)
            wgmma_ss<Elem, BlockN, 0, 0>(acc, tile_desc(a + 32 * kk), tile_desc(b + 32 * kk), 1);
        wgmma_commit();
        wgmma_wait<0>();
        fence_registers(acc);
        // This warp's reads of the stage are done: one arrival per consumer warp.
        if (lane == 0) mbarrier_arrive(empty + 8 * s);
    }

    // The accumulator layout (csrc/cpu/sm90_isa.h): warp w of the warpgroup holds rows
    // 16 w .. 16 w + 15; lane 4 g + q, register i: row g + 8 (i / 2 % 2), column
    // 8 (i / 4) + 2 q + i % 2.
    const int t = threadIdx.x - 128, w = t / 32, g = t % 32 / 4, q = t % 4;
    for (int i = 0; i < BlockN / 2; ++i) {
        const int row = m0 + 16 * w + g + 8 * (i / 2 % 2), col = n0 + 8 * (i / 4) + 2 * q + i % 2;
        if (row < m && col < n) c[size_t(row) * n + col] = acc[i];
    }
}

}  // namespace hopper_gemm
}  // namespace maskattn

extern "C" __global__ void __launch_bounds__(maskattn::hopper_gemm::kThreads, 1)
    maskattn_hopper_gemm_bf16_n128(const __grid_constant__ maskattn::sm90::TensorMap a,
                                   const __grid_constant__ maskattn::sm90::TensorMap b, float *c, int m, int n, int k) {
    maskattn::hopper_gemm::gemm<__nv_bfloat16, 128>(&a, &b, c, m, n, k);
}
MASKATTN_REGISTER_KERNEL(maskattn_hopper_gemm_bf16_n128)

extern "C" __global__ void __launch_bounds__(maskattn::hopper_gemm::kThreads, 1)
    maskattn_hopper_gemm_f16_n64(const __grid_constant__ maskattn::sm90::TensorMap a,
                                 const __grid_constant__ maskattn::sm90::TensorMap b, float *c, int m, int n, int k) {
    maskattn::hopper_gemm::gemm<__half, 64>(&a, &b, c, m, n, k);
}
MASKATTN_REGISTER_KERNEL(maskattn_hopper_gemm_f16_n64)
