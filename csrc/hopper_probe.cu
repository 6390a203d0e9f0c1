// One warpgroup runs wgmma.mma_async m64nNk16 on shared-memory images, descriptors,
// A registers and accumulators given by the host: the conformance test of wgmma
// (src/launch/probe_sm90.rs). The host places every element of A and B where the PTX
// ISA's shared-memory layouts put it, builds the A fragments and reads the
// accumulators with the ISA's register layouts, and predicts every output bit, so
// the same vectors check the CPU backend's emulation and, on an sm_90 GPU, the
// hardware. Nothing here knows a layout; it only moves bytes and registers.
#include "params.h"
#include "prims.cuh"
// After prims.cuh, which gives the host build __host__ and __device__.
#include "hopper/smem_desc.cuh"

namespace maskattn {
namespace hopper_probe {

// Each case's shared-memory image, copied to a 1,024-byte aligned place of the
// dynamic shared memory (kImageBytes + 1,024 bytes): the swizzle patterns are
// functions of absolute addresses, aligned so they are the image's own offsets.
constexpr int kImageBytes = 32 * 1024;
constexpr int kThreads = 128;
// Accumulator words per thread in c_in / d_out (N / 2 <= 128 of them are used).
constexpr int kAccWords = 128;
// A-fragment words per thread: four for each of up to two k16 steps.
constexpr int kAWords = 8;

// The kernel's buffers (see maskattn_probe_hopper_wgmma) and the aligned tile.
struct Io {
    unsigned char *tile;
    const uint32_t *image;
    const uint64_t *descs;
    const uint32_t *scale_d;
    const uint32_t *a_regs;
    const uint32_t *c_in;
    uint32_t *d_out;
};

// Case `c`: kSteps wgmmas in one group, the first with the case's scale-d, the next
// accumulating (scale-d 1), each moving the descriptors by the case's advances. A
// comes from shared memory (desc_a) or, with kRegsA, from a_regs.
template <typename Elem, int N, int TransA, int TransB, bool kRegsA, int kSteps>
__device__ __forceinline__ void probe_case(int c, const Io &io) {
    const int t = threadIdx.x;
    const uint4 *src = reinterpret_cast<const uint4 *>(io.image) + size_t(c) * (kImageBytes / 16);
    uint4 *dst = reinterpret_cast<uint4 *>(io.tile);
    for (int i = t; i < kImageBytes / 16; i += kThreads) dst[i] = src[i];

    float d[N / 2];
    const uint32_t *ci = io.c_in + (size_t(c) * kThreads + t) * kAccWords;
    for (int i = 0; i < N / 2; ++i) d[i] = __uint_as_float(ci[i]);
    const uint32_t *ai = io.a_regs + (size_t(c) * kThreads + t) * kAWords;
    uint32_t a[2][4];
    for (int s = 0; s < 2; ++s)
        for (int r = 0; r < 4; ++r) a[s][r] = ai[4 * s + r];

    // The host's descriptors address the image from 0: move them onto the tile.
    const uint32_t base = maskattn::sm90::smem_u32(io.tile);
    const uint64_t *p = io.descs + 4 * size_t(c);
    uint64_t desc_a = maskattn::sm90::advance_smem_desc(p[0], base);
    uint64_t desc_b = maskattn::sm90::advance_smem_desc(p[1], base);

    __syncthreads();
    // The image was written by the generic proxy; wgmma reads through the async one.
    maskattn::sm90::fence_proxy_async_shared();
    maskattn::sm90::wgmma_fence();
    for (int s = 0; s < kSteps; ++s) {
        const int scale = s == 0 ? int(io.scale_d[c]) : 1;
        if constexpr (kRegsA) {
            maskattn::sm90::wgmma_rs<Elem, N, TransB>(d, a[s], desc_b, scale);
        } else {
            maskattn::sm90::wgmma_ss<Elem, N, TransA, TransB>(d, desc_a, desc_b, scale);
        }
        desc_a = maskattn::sm90::advance_smem_desc(desc_a, uint32_t(p[2]));
        desc_b = maskattn::sm90::advance_smem_desc(desc_b, uint32_t(p[3]));
    }
    maskattn::sm90::wgmma_commit();
    maskattn::sm90::wgmma_wait<0>();
    maskattn::sm90::fence_registers(d);

    uint32_t *out = io.d_out + (size_t(c) * kThreads + t) * kAccWords;
    for (int i = 0; i < N / 2; ++i) out[i] = __float_as_uint(d[i]);
    // The next case overwrites the tile.
    __syncthreads();
}

}  // namespace hopper_probe
}  // namespace maskattn

// The cases, in order (A: majorness / swizzle of its image, or registers; scale-d of
// the first wgmma); the host's table (CASES in src/launch/probe_sm90.rs) repeats it:
//  0 f16  N64  A K/128B   B K/128B   | 1 bf16 N64  A MN/128B  B MN/128B
//  2 f16  N96  A K/64B    B MN/32B   | 3 bf16 N128 A MN/32B   B K/64B
//  4 f16  N128 A K/none   B K/none   | 5 bf16 N192 A MN/none  B MN/none
//  6 f16  N256 A K/32B    B MN/64B   | 7 bf16 N256 A MN/64B   B K/32B
//  8 f16  N128 A K/128B   B MN/128B, two k16 steps (k = 32)
//  9 bf16 N64  A regs     B K/none   | 10 f16 N96 A regs      B MN/128B
// 11 bf16 N192 A regs     B K/128B, two k16 steps (k = 32)
// The swizzle modes and strides are the descriptors' (runtime); the template
// parameters fix only what the instruction encodes.
//
// image [12][kImageBytes / 4]: each case's shared memory; descs [12][4]: desc_a,
// desc_b (start addresses relative to the image), the byte advance of A and of B per
// k16 step; scale_d [12]; a_regs [12][128][8]: per thread A's four registers for
// step 0, then step 1; c_in [12][128][128]: per thread the initial accumulator d[i]
// (f32 bits, i < N / 2) -> d_out [12][128][128]: the accumulator after wait_group 0.
extern "C" __global__ void maskattn_probe_hopper_wgmma(const uint32_t *image, const uint64_t *descs,
                                                const uint32_t *scale_d, const uint32_t *a_regs,
                                                const uint32_t *c_in, uint32_t *d_out) {
    using maskattn::hopper_probe::probe_case;
    unsigned char *smem = maskattn::dynamic_smem();
    const maskattn::hopper_probe::Io io{smem + (1024 - maskattn::sm90::smem_u32(smem) % 1024) % 1024,
                                        image, descs, scale_d, a_regs, c_in, d_out};
    probe_case<__half, 64, 0, 0, false, 1>(0, io);
    probe_case<__nv_bfloat16, 64, 1, 1, false, 1>(1, io);
    probe_case<__half, 96, 0, 1, false, 1>(2, io);
    probe_case<__nv_bfloat16, 128, 1, 0, false, 1>(3, io);
    probe_case<__half, 128, 0, 0, false, 1>(4, io);
    probe_case<__nv_bfloat16, 192, 1, 1, false, 1>(5, io);
    probe_case<__half, 256, 0, 1, false, 1>(6, io);
    probe_case<__nv_bfloat16, 256, 1, 0, false, 1>(7, io);
    probe_case<__half, 128, 0, 1, false, 2>(8, io);
    probe_case<__nv_bfloat16, 64, 0, 0, true, 1>(9, io);
    probe_case<__half, 96, 0, 1, true, 1>(10, io);
    probe_case<__nv_bfloat16, 192, 0, 0, true, 2>(11, io);
}
MASKATTN_REGISTER_KERNEL(maskattn_probe_hopper_wgmma)
