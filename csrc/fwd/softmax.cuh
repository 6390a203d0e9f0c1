// Online softmax over the key tiles, in base 2, on S in the mma accumulator
// layout: lane holds rows lane / 4 (half 0) and lane / 4 + 8 (half 1) of each m16
// fragment, two adjacent keys per n8 fragment; the 4 lanes of a quad share a row.
#pragma once

#include <math_constants.h>

#include "prims.cuh"

namespace maskattn {
namespace fwd {

__device__ __forceinline__ float quad_max(float x) {
    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
    return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}

__device__ __forceinline__ float quad_sum(float x) {
    x += __shfl_xor_sync(0xffffffffu, x, 1);
    return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

template <int MF>
struct OnlineSoftmax {
    float row_max[MF][2];  // max of scale_log2 * score so far; -inf while no key was visible
    float row_sum[MF][2];  // this lane's share of sum 2^(x - row_max); the quad is summed at the end

    __device__ __forceinline__ OnlineSoftmax() {
#pragma unroll
        for (int mf = 0; mf < MF; ++mf)
#pragma unroll
            for (int half = 0; half < 2; ++half) {
                row_max[mf][half] = -CUDART_INF_F;
                row_sum[mf][half] = 0.f;
            }
    }

    // Folds in one key tile: s (raw scores, -inf where masked) becomes the
    // probabilities 2^(scale_log2 * s - row_max), and alpha the factor by which the
    // accumulator must shrink to the new max (rescale). A row whose max is still
    // -inf subtracts 0 instead, so 2^(-inf - 0) = 0 and nothing computes
    // -inf - (-inf). Assumes scale_log2 > 0. Returns whether some row of this lane
    // got a new max (else every alpha is 1). Split from rescale so that the Hopper
    // kernel can fold the next tile while the accumulator is still in flight.
    template <int NF>
    __device__ __forceinline__ bool fold(float (&s)[MF][NF][4], float (&alpha)[MF][2], float scale_log2) {
        bool grew = false;
#pragma unroll
        for (int mf = 0; mf < MF; ++mf)
#pragma unroll
            for (int half = 0; half < 2; ++half) {
                float mx = -CUDART_INF_F;
#pragma unroll
                for (int nf = 0; nf < NF; ++nf)
                    mx = fmaxf(mx, fmaxf(s[mf][nf][2 * half], s[mf][nf][2 * half + 1]));
                const float m_new = fmaxf(row_max[mf][half], quad_max(mx) * scale_log2);
                const float base = m_new == -CUDART_INF_F ? 0.f : m_new;
                grew |= m_new != row_max[mf][half];
                alpha[mf][half] = exp2_approx(row_max[mf][half] - base);
                row_max[mf][half] = m_new;
                float sum = 0.f;
#pragma unroll
                for (int nf = 0; nf < NF; ++nf)
#pragma unroll
                    for (int e = 0; e < 2; ++e) {
                        float &x = s[mf][nf][2 * half + e];
                        x = exp2_approx(fmaf(x, scale_log2, -base));
                        sum += x;
                    }
                row_sum[mf][half] = row_sum[mf][half] * alpha[mf][half] + sum;
            }
        return grew;
    }

    // acc *= alpha per row. Where no row of the warp has a new max, every alpha is
    // 2^0 = 1: after the first tiles that is the common case, and skipping the
    // multiplications saves 4 * DF * MF instructions a tile (128 at D = 128, as many
    // as the mmas).
    template <int DF>
    __device__ __forceinline__ static void rescale(float (&acc)[MF][DF][4], const float (&alpha)[MF][2], bool grew) {
        if (__any_sync(0xffffffffu, grew)) {
#pragma unroll
            for (int mf = 0; mf < MF; ++mf)
#pragma unroll
                for (int df = 0; df < DF; ++df)
#pragma unroll
                    for (int e = 0; e < 4; ++e) acc[mf][df][e] *= alpha[mf][e / 2];
        }
    }

    // fold, then rescale: one key tile when the accumulator is at hand.
    template <int NF, int DF>
    __device__ __forceinline__ void update(float (&s)[MF][NF][4], float (&acc)[MF][DF][4], float scale_log2) {
        float alpha[MF][2];
        rescale(acc, alpha, fold(s, alpha, scale_log2));
    }

    // Per row: the factor that normalizes the accumulator and the log-sum-exp
    // (natural log) of the scaled scores; a row that saw no key gets 0 and -inf.
    __device__ __forceinline__ void finalize(float (&inv_sum)[MF][2], float (&lse)[MF][2]) const {
#pragma unroll
        for (int mf = 0; mf < MF; ++mf)
#pragma unroll
            for (int half = 0; half < 2; ++half) {
                const float l = quad_sum(row_sum[mf][half]);
                const bool seen = l > 0.f;
                inv_sum[mf][half] = seen ? 1.f / l : 0.f;
                lse[mf][half] = seen ? (row_max[mf][half] + log2f(l)) * CUDART_LN2_F : -CUDART_INF_F;
            }
    }
};

}  // namespace fwd
}  // namespace maskattn
