// Temporal-Aware Dual RoPE (TC-LLaVA), in place on bf16/f16 Q and K: pair i of
// token l turns by positions[l] * theta_i, theta_i = base^(-2i/D), where
// positions[l] = p_global + gamma * t (computed on the host, src/rope.rs).
//
// Angles: the angle in half-turns, positions[l] * theta_i / pi, is formed and
// reduced to [-1, 1] in double, then sincospif runs in float on the reduced value.
// The angle is then good to ~1e-7 rad for multipliers below 1e8 (a float product
// multiplier * inv_freq, as HF computes it, is off by up to ~1.2e-7 * multiplier,
// 0.016 rad at 131072), and sincospif's exact argument reduction needs no local
// memory (sincosf's slow path for large arguments does). The double work is
// done once per (token, pair) per CTA and shared through shared memory by every
// (batch, head) row of both tensors, so it costs little even where FP64 is slow.
//
// Layout of one CTA: tokens_per_block consecutive tokens; phase 1 computes
// theta_i / pi, phase 2 the (cos, sin) of every (token, pair), phase 3 walks
// (token, row, chunk) items, a chunk being 16 bytes (8 elements) of a row (with
// the matching 16 bytes D/2 further for the Half pairing).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "params.h"
#include "prims.cuh"

namespace maskattn_rope {

template <typename T>
struct Packed;

template <>
struct Packed<__nv_bfloat16> {
    using T2 = __nv_bfloat162;
    static __device__ __forceinline__ float2 widen(T2 v) { return __bfloat1622float2(v); }
    static __device__ __forceinline__ T2 narrow(float2 v) { return __float22bfloat162_rn(v); }
};

template <>
struct Packed<__half> {
    using T2 = __half2;
    static __device__ __forceinline__ float2 widen(T2 v) { return __half22float2(v); }
    static __device__ __forceinline__ T2 narrow(float2 v) { return __float22half2_rn(v); }
};

// (a, b) -> (a cos - b sin, a sin + b cos), with cs = (cos, sin).
__device__ __forceinline__ void rotate(float &a, float &b, float2 cs) {
    const float ra = a * cs.x - b * cs.y;
    const float rb = a * cs.y + b * cs.x;
    a = ra;
    b = rb;
}

template <typename T>
__device__ __forceinline__ void dual_rope(const MaskattnRopeParams &p) {
    using P = Packed<T>;
    using T2 = typename P::T2;
    unsigned char *const rope_smem = maskattn::dynamic_smem();
    const int npairs = p.head_dim / 2;
    double *half_turns = reinterpret_cast<double *>(rope_smem);   // [npairs]: theta_i / pi
    float2 *cs = reinterpret_cast<float2 *>(half_turns + npairs);  // [tokens][npairs]: cos, sin

    const int64_t l0 = int64_t(blockIdx.x) * p.tokens_per_block;
    const int ntok = int(min(int64_t(p.tokens_per_block), int64_t(p.len) - l0));

    for (int i = threadIdx.x; i < npairs; i += blockDim.x) {
        half_turns[i] = exp2(-2.0 * double(i) / double(p.head_dim) * p.log2_base) * 0.31830988618379067154;
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < ntok * npairs; idx += blockDim.x) {
        const int tl = idx / npairs;
        const int i = idx - tl * npairs;
        double turns = __ldg(p.positions + l0 + tl) * half_turns[i];
        turns -= 2.0 * rint(0.5 * turns);  // exact: now in [-1, 1]
        float s, c;
        sincospif(float(turns), &s, &c);
        cs[idx] = make_float2(c, s);
    }
    __syncthreads();

    const int rows0 = p.batch * p.heads[0];
    const int rows = rows0 + p.batch * p.heads[1];
    const int chunks = p.interleaved ? p.head_dim / 8 : npairs / 8;
    const int items = ntok * rows * chunks;
    for (int w = threadIdx.x; w < items; w += blockDim.x) {
        const int c = w % chunks;
        const int rest = w / chunks;
        const int r = rest % rows;
        const int tl = rest / rows;
        // Selects rather than indexes the parameter arrays: a dynamic index would
        // copy the parameters to local memory.
        const bool second = r >= rows0;
        const int rr = second ? r - rows0 : r;
        const int heads = second ? p.heads[1] : p.heads[0];
        const int b = rr / heads;
        const int h = rr - b * heads;
        T *row = static_cast<T *>(second ? p.x[1] : p.x[0]) +
                 b * (second ? p.batch_stride[1] : p.batch_stride[0]) +
                 (l0 + tl) * (second ? p.row_stride[1] : p.row_stride[0]) +
                 h * (second ? p.head_stride[1] : p.head_stride[0]);
        const float2 *angle = cs + tl * npairs;
        if (p.interleaved) {
            // 8 elements = pairs 4c .. 4c + 3, each an adjacent (x[2j], x[2j + 1]).
            uint4 *ptr = reinterpret_cast<uint4 *>(row + 8 * c);
            uint4 v = *ptr;
            T2 *e = reinterpret_cast<T2 *>(&v);
#pragma unroll
            for (int k = 0; k < 4; ++k) {
                float2 xy = P::widen(e[k]);
                rotate(xy.x, xy.y, angle[4 * c + k]);
                e[k] = P::narrow(xy);
            }
            *ptr = v;
        } else {
            // Pairs 8c .. 8c + 7: x[8c + k] with x[D/2 + 8c + k].
            uint4 *pa = reinterpret_cast<uint4 *>(row + 8 * c);
            uint4 *pb = reinterpret_cast<uint4 *>(row + npairs + 8 * c);
            uint4 va = *pa;
            uint4 vb = *pb;
            T2 *ea = reinterpret_cast<T2 *>(&va);
            T2 *eb = reinterpret_cast<T2 *>(&vb);
#pragma unroll
            for (int k = 0; k < 4; ++k) {
                float2 a = P::widen(ea[k]);
                float2 bb = P::widen(eb[k]);
                rotate(a.x, bb.x, angle[8 * c + 2 * k]);
                rotate(a.y, bb.y, angle[8 * c + 2 * k + 1]);
                ea[k] = P::narrow(a);
                eb[k] = P::narrow(bb);
            }
            *pa = va;
            *pb = vb;
        }
    }
}

}  // namespace maskattn_rope

extern "C" __global__ void __launch_bounds__(128) maskattn_dual_rope_bf16(const MaskattnRopeParams p) {
    maskattn_rope::dual_rope<__nv_bfloat16>(p);
}
MASKATTN_REGISTER_KERNEL(maskattn_dual_rope_bf16)

extern "C" __global__ void __launch_bounds__(128) maskattn_dual_rope_f16(const MaskattnRopeParams p) {
    maskattn_rope::dual_rope<__half>(p);
}
MASKATTN_REGISTER_KERNEL(maskattn_dual_rope_f16)
