// A deliberately naive attention: what a user writes without flash attention. For
// one (batch, query head) at a time (the host loops), three kernels on CUDA cores:
//   1. S = scale * Q K^T into an f32 [Lq, Lk] scratch (16x16 shared-memory tiles),
//   2. per row: the mask (-inf outside the row's intervals), softmax in f32, P
//      written over S, and the row's LSE (a row with no visible key: P = 0, -inf),
//   3. O = P V (16x16 tiles), rounded to the input dtype.
// Every pair is computed, masked or not: the point of comparison for the flash
// kernels, which skip EMPTY tiles and never write S to memory.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "mask_tiles.h"
#include "prims.cuh"

namespace maskattn_naive {

constexpr int kTile = 16;
constexpr int kSoftmaxThreads = 256;

__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }
template <>
__device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }

// S[i][j] = scale * sum_c q[i][c] k[j][c]; q and k point at row 0 of one head, rows
// `q_row` / `k_row` elements apart. Block (16, 16): x walks keys, y query rows.
template <typename T>
__device__ __forceinline__ void scores(const T *__restrict__ q, int64_t q_row, const T *__restrict__ k,
                                       int64_t k_row, int32_t len_q, int32_t len_k, int32_t head_dim, float scale,
                                       float *__restrict__ s) {
    MASKATTN_SHARED(float[kTile][kTile + 1], qs);
    MASKATTN_SHARED(float[kTile][kTile + 1], ks);
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int32_t i = blockIdx.y * kTile + ty;
    const int32_t j = blockIdx.x * kTile + tx;
    const int32_t kj = blockIdx.x * kTile + ty;  // the key row this thread loads
    float acc = 0.f;
    for (int32_t c0 = 0; c0 < head_dim; c0 += kTile) {
        const int32_t c = c0 + tx;
        qs[ty][tx] = (i < len_q && c < head_dim) ? to_float(q[i * q_row + c]) : 0.f;
        ks[ty][tx] = (kj < len_k && c < head_dim) ? to_float(k[kj * k_row + c]) : 0.f;
        __syncthreads();
#pragma unroll
        for (int t = 0; t < kTile; ++t) acc += qs[ty][t] * ks[tx][t];
        __syncthreads();
    }
    if (i < len_q && j < len_k) s[int64_t(i) * len_k + j] = scale * acc;
}

template <int N>
__device__ __forceinline__ float block_reduce(float x, bool is_max, float *scratch) {
    for (int o = 16; o > 0; o >>= 1) {
        const float y = __shfl_xor_sync(0xffffffffu, x, o);
        x = is_max ? fmaxf(x, y) : x + y;
    }
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    __syncthreads();  // scratch may still be read by the previous reduction
    if (lane == 0) scratch[warp] = x;
    __syncthreads();
    x = scratch[0];
    for (int w = 1; w < N / 32; ++w) x = is_max ? fmaxf(x, scratch[w]) : x + scratch[w];
    return x;
}

// One block of kSoftmaxThreads per query row of s ([len_q][len_k]).
__device__ __forceinline__ void masked_softmax(float *__restrict__ s, const int32_t *__restrict__ intervals,
                                               int32_t len_k, float *__restrict__ lse) {
    MASKATTN_SHARED(float[kSoftmaxThreads / 32], scratch);
    const int32_t row = blockIdx.x;
    const int32_t *iv = intervals + 4 * int64_t(row);
    float *sr = s + int64_t(row) * len_k;
    float m = -INFINITY;
    for (int32_t j = threadIdx.x; j < len_k; j += blockDim.x) {
        if (maskattn::key_visible(iv, j)) m = fmaxf(m, sr[j]);
    }
    m = block_reduce<kSoftmaxThreads>(m, true, scratch);
    float sum = 0.f;
    if (m != -INFINITY) {
        for (int32_t j = threadIdx.x; j < len_k; j += blockDim.x) {
            if (maskattn::key_visible(iv, j)) sum += expf(sr[j] - m);
        }
    }
    sum = block_reduce<kSoftmaxThreads>(sum, false, scratch);
    const float inv = m == -INFINITY ? 0.f : 1.f / sum;
    for (int32_t j = threadIdx.x; j < len_k; j += blockDim.x) {
        sr[j] = (m != -INFINITY && maskattn::key_visible(iv, j)) ? expf(sr[j] - m) * inv : 0.f;
    }
    if (threadIdx.x == 0) lse[row] = m == -INFINITY ? -INFINITY : m + logf(sum);
}

// O[i][c] = sum_j P[i][j] v[j][c]. Block (16, 16): x walks head dims, y query rows.
template <typename T>
__device__ __forceinline__ void pv(const float *__restrict__ p, const T *__restrict__ v, int64_t v_row,
                                   int32_t len_q, int32_t len_k, int32_t head_dim, T *__restrict__ o,
                                   int64_t o_row) {
    MASKATTN_SHARED(float[kTile][kTile + 1], ps);
    MASKATTN_SHARED(float[kTile][kTile + 1], vs);
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int32_t i = blockIdx.y * kTile + ty;
    const int32_t c = blockIdx.x * kTile + tx;
    float acc = 0.f;
    for (int32_t j0 = 0; j0 < len_k; j0 += kTile) {
        const int32_t pj = j0 + tx, vj = j0 + ty;
        ps[ty][tx] = (i < len_q && pj < len_k) ? p[int64_t(i) * len_k + pj] : 0.f;
        vs[ty][tx] = (vj < len_k && c < head_dim) ? to_float(v[vj * v_row + c]) : 0.f;
        __syncthreads();
#pragma unroll
        for (int t = 0; t < kTile; ++t) acc += ps[ty][t] * vs[t][tx];
        __syncthreads();
    }
    if (i < len_q && c < head_dim) o[i * o_row + c] = from_float<T>(acc);
}

}  // namespace maskattn_naive

#define MASKATTN_NAIVE_KERNELS(NAME, T)                                                                      \
    extern "C" __global__ void __launch_bounds__(256)                                                        \
        maskattn_naive_scores_##NAME(const T *__restrict__ q, int64_t q_row, const T *__restrict__ k,        \
                                     int64_t k_row, int32_t len_q, int32_t len_k, int32_t head_dim,          \
                                     float scale, float *__restrict__ s) {                                   \
        maskattn_naive::scores<T>(q, q_row, k, k_row, len_q, len_k, head_dim, scale, s);                     \
    }                                                                                                        \
    MASKATTN_REGISTER_KERNEL(maskattn_naive_scores_##NAME)                                                   \
    extern "C" __global__ void __launch_bounds__(256)                                                        \
        maskattn_naive_pv_##NAME(const float *__restrict__ p, const T *__restrict__ v, int64_t v_row,        \
                                 int32_t len_q, int32_t len_k, int32_t head_dim, T *__restrict__ o,          \
                                 int64_t o_row) {                                                            \
        maskattn_naive::pv<T>(p, v, v_row, len_q, len_k, head_dim, o, o_row);                                \
    }                                                                                                        \
    MASKATTN_REGISTER_KERNEL(maskattn_naive_pv_##NAME)

MASKATTN_NAIVE_KERNELS(bf16, __nv_bfloat16)
MASKATTN_NAIVE_KERNELS(f16, __half)

#undef MASKATTN_NAIVE_KERNELS

extern "C" __global__ void __launch_bounds__(256)
    maskattn_naive_softmax(float *__restrict__ s, const int32_t *__restrict__ intervals, int32_t len_k,
                           float *__restrict__ lse) {
    maskattn_naive::masked_softmax(s, intervals, len_k, lse);
}
MASKATTN_REGISTER_KERNEL(maskattn_naive_softmax)
