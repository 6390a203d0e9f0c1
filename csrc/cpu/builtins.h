// The CUDA builtins the kernels use, for their host build (the CPU backend).
// crt/host_defines.h already turns __device__, __global__, __host__ and
// __forceinline__ into host C++; the rest is here. Thread and block indices are
// the current fiber's; synchronization goes through the runtime (csrc/cpu/runtime.h).
#pragma once

#include <math.h>
#include <stdint.h>
#include <string.h>

#include <type_traits>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cpu/runtime.h"

#undef __launch_bounds__
#define __launch_bounds__(...)
// A kernel parameter whose address is taken (tensor maps): the trampoline's copy is it.
#undef __grid_constant__
#define __grid_constant__

// Shared memory must be per CTA, not per fiber: a plain __shared__ would compile
// into a stack variable of each thread on the host, so it is a compile error here.
#undef __shared__
#define __shared__ use_MASKATTN_SHARED_or_dynamic_smem_for_shared_memory

#define threadIdx (::maskattn::cpu::self().thread_idx)
#define blockIdx (::maskattn::cpu::self().cta->block_idx)
#define blockDim (::maskattn::cpu::self().cta->block_dim)
#define gridDim (::maskattn::cpu::self().cta->grid_dim)

inline void __syncthreads() { ::maskattn::cpu::block_barrier(); }

inline void __syncwarp(unsigned mask = 0xffffffffu) { ::maskattn::cpu::collective(::maskattn::cpu::Op::kSyncWarp, mask); }

// shfl.sync.bfly: a source lane in a later width-group than the caller gives the
// caller its own value.
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = 32) {
    static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= 8, "32- or 64-bit values");
    ::maskattn::cpu::LaneIo &io = ::maskattn::cpu::self().io;
    memset(io.in, 0, 8);
    memcpy(io.in, &var, sizeof(T));
    io.in[2] = uint32_t(lane_mask);
    io.in[3] = uint32_t(width);
    ::maskattn::cpu::collective(::maskattn::cpu::Op::kShflXor, mask);
    T r;
    memcpy(&r, io.out, sizeof(T));
    return r;
}

inline int __any_sync(unsigned mask, int predicate) {
    ::maskattn::cpu::LaneIo &io = ::maskattn::cpu::self().io;
    io.in[0] = predicate != 0;
    ::maskattn::cpu::collective(::maskattn::cpu::Op::kVoteAny, mask);
    return int(io.out[0]);
}

template <typename T>
inline T __ldg(const T *p) {
    return *p;
}

inline size_t __cvta_generic_to_shared(const void *p) { return ::maskattn::cpu::to_shared(p); }

// Atomics of the dQ accumulation: real host atomics, since CTAs run concurrently.
inline float atomicAdd(float *address, float value) {
    uint32_t old = __atomic_load_n(reinterpret_cast<uint32_t *>(address), __ATOMIC_RELAXED);
    for (;;) {
        float f;
        memcpy(&f, &old, 4);
        f += value;
        uint32_t next;
        memcpy(&next, &f, 4);
        if (__atomic_compare_exchange_n(reinterpret_cast<uint32_t *>(address), &old, next, true, __ATOMIC_RELAXED,
                                        __ATOMIC_RELAXED))
            return f - value;
    }
}

// red.global.add.v2.f32 adds each component atomically, not the pair as one.
inline float2 atomicAdd(float2 *address, float2 value) {
    float2 old;
    old.x = atomicAdd(&address->x, value.x);
    old.y = atomicAdd(&address->y, value.y);
    return old;
}

inline float __int_as_float(int x) {
    float f;
    memcpy(&f, &x, 4);
    return f;
}
inline float __uint_as_float(unsigned x) {
    float f;
    memcpy(&f, &x, 4);
    return f;
}
inline int __float_as_int(float f) {
    int x;
    memcpy(&x, &f, 4);
    return x;
}
inline unsigned __float_as_uint(float f) {
    unsigned x;
    memcpy(&x, &f, 4);
    return x;
}

// CUDA's integer min/max overloads (the kernels call them unqualified).
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long min(long a, long b) { return a < b ? a : b; }
inline long max(long a, long b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }

// Device sincospif is within 1 ulp, not correctly rounded: the host's double
// evaluation rounded to float may differ from it in the last bit.
inline void sincospif(float x, float *s, float *c) {
    const double a = 3.14159265358979323846 * double(x);
    *s = float(sin(a));
    *c = float(cos(a));
}
