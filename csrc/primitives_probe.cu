// One warp runs each primitive of prims.cuh once on raw registers given by the
// host: the conformance test of the primitives (src/launch/probe.rs). The host
// builds the registers from matrices with the PTX ISA's fragment layouts and
// predicts every output bit, so the same vectors check the CPU backend's emulation
// and, on a GPU, the hardware: the day both run, they are compared bit for bit.
// Nothing here knows a fragment layout; it only moves registers.
#include "params.h"
#include "prims.cuh"

using maskattn::fwd::cp_async_16;
using maskattn::fwd::cp_async_commit;
using maskattn::fwd::cp_async_wait;
using maskattn::fwd::smem_u32;

// Dynamic shared memory (1,536 bytes): the 512 bytes ldmatrix reads, then the two
// cp.async destinations of 32 x 16 bytes.
constexpr int kLdmBytes = 512;
constexpr int kCpBytes = 32 * 16;

template <typename Elem>
__device__ __forceinline__ void probe_mma(const uint32_t *in, uint32_t *out, int lane) {
    // in: per lane a[4], b[2], c[4] (f32 bits); out: per lane d[4].
    const uint32_t *p = in + 10 * lane;
    const uint32_t a[4] = {p[0], p[1], p[2], p[3]};
    float c[4];
    for (int i = 0; i < 4; ++i) c[i] = __uint_as_float(p[6 + i]);
    maskattn::fwd::mma_16816<Elem>(c, a, p[4], p[5]);
    for (int i = 0; i < 4; ++i) out[4 * lane + i] = __float_as_uint(c[i]);
}

// mma_in [2][32][10] (f16, then bf16) -> mma_out [2][32][4]; ldm_tile: the 512
// bytes of shared memory; ldm_offsets [32]: the byte offset of the row each lane
// addresses -> ldm_out [2][32][4] (x4, then x4.trans); cp_src [2][32][4]: each
// lane's two 16-byte chunks, cp_valid [2][32]: copy (1) or zero-fill (0) ->
// cp_out [3][32][4]: the lane's own chunk 0 after wait_group 1, then chunk 0 and
// chunk 1 of lane (lane + 1) % 32 after wait_group 0 and __syncthreads;
// cvt_in [n_cvt][2] f32 bits (lo, hi) -> cvt_out [2][n_cvt] (f16x2, then bf16x2);
// ex2_in [n_ex2] f32 bits -> ex2_out [n_ex2].
extern "C" __global__ void maskattn_probe_primitives(const uint32_t *mma_in, uint32_t *mma_out,
                                                     const uint32_t *ldm_tile, const uint32_t *ldm_offsets,
                                                     uint32_t *ldm_out, const uint32_t *cp_src,
                                                     const uint32_t *cp_valid, uint32_t *cp_out,
                                                     const uint32_t *cvt_in, uint32_t *cvt_out, int32_t n_cvt,
                                                     const uint32_t *ex2_in, uint32_t *ex2_out, int32_t n_ex2) {
    unsigned char *smem = maskattn::dynamic_smem();
    const int lane = threadIdx.x;

    probe_mma<__half>(mma_in, mma_out, lane);
    probe_mma<__nv_bfloat16>(mma_in + 320, mma_out + 128, lane);

    uint32_t *ldm = reinterpret_cast<uint32_t *>(smem);
    for (int i = lane; i < kLdmBytes / 4; i += 32) ldm[i] = ldm_tile[i];
    __syncthreads();
    uint32_t r[4];
    maskattn::fwd::ldmatrix_x4(r, smem_u32(smem + ldm_offsets[lane]));
    for (int i = 0; i < 4; ++i) ldm_out[4 * lane + i] = r[i];
    maskattn::fwd::ldmatrix_x4_trans(r, smem_u32(smem + ldm_offsets[lane]));
    for (int i = 0; i < 4; ++i) ldm_out[128 + 4 * lane + i] = r[i];

    unsigned char *cp0 = smem + kLdmBytes, *cp1 = cp0 + kCpBytes;
    cp_async_16(smem_u32(cp0 + 16 * lane), cp_src + 4 * lane, cp_valid[lane] != 0);
    cp_async_commit();
    cp_async_16(smem_u32(cp1 + 16 * lane), cp_src + 128 + 4 * lane, cp_valid[32 + lane] != 0);
    cp_async_commit();
    // At most one group in flight: this thread's first copy has landed.
    cp_async_wait<1>();
    const uint32_t *own = reinterpret_cast<const uint32_t *>(cp0 + 16 * lane);
    for (int i = 0; i < 4; ++i) cp_out[4 * lane + i] = own[i];
    cp_async_wait<0>();
    __syncthreads();
    const int next = (lane + 1) % 32;
    const uint32_t *n0 = reinterpret_cast<const uint32_t *>(cp0 + 16 * next);
    const uint32_t *n1 = reinterpret_cast<const uint32_t *>(cp1 + 16 * next);
    for (int i = 0; i < 4; ++i) {
        cp_out[128 + 4 * lane + i] = n0[i];
        cp_out[256 + 4 * lane + i] = n1[i];
    }

    for (int i = lane; i < n_cvt; i += 32) {
        const float lo = __uint_as_float(cvt_in[2 * i]), hi = __uint_as_float(cvt_in[2 * i + 1]);
        cvt_out[i] = maskattn::fwd::pack2<__half>(lo, hi);
        cvt_out[n_cvt + i] = maskattn::fwd::pack2<__nv_bfloat16>(lo, hi);
    }
    for (int i = lane; i < n_ex2; i += 32)
        ex2_out[i] = __float_as_uint(maskattn::fwd::exp2_approx(__uint_as_float(ex2_in[i])));
}
MASKATTN_REGISTER_KERNEL(maskattn_probe_primitives)
