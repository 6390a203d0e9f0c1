// The GPU build of the primitives (csrc/prims.cuh): PTX wrappers of the sm_80
// instructions the kernels (forward, backward, XAttention scoring) are built from:
// cp.async (global -> shared, bypassing registers), ldmatrix (shared -> mma
// fragments) and mma.sync m16n8k16 with f32 accumulation. They also run on sm_90
// and later, where the Hopper-only paths (wgmma, TMA) would be separate kernels.
// csrc/cpu/prims.h is the CPU backend's build of the same functions.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include <type_traits>

#define MASKATTN_SHARED(Type, name) __shared__ ::maskattn::shared_type<Type> name
// Kernels are found by name in the fatbin; only the CPU backend keeps a registry.
#define MASKATTN_REGISTER_KERNEL(name)

namespace maskattn {

template <class T>
using shared_type = T;

// The launch's dynamic shared memory.
__device__ __forceinline__ unsigned char *dynamic_smem() {
    extern __shared__ __align__(128) unsigned char maskattn_dynamic_smem[];
    return maskattn_dynamic_smem;
}

// threadIdx.x read afresh: volatile, so the compiler can neither merge it with
// earlier reads nor keep values derived from those alive across a loop (registers
// the loop needs more).
__device__ __forceinline__ int fresh_thread_index() {
    int t;
    asm volatile("mov.u32 %0, %%tid.x;\n" : "=r"(t));
    return t;
}

// The CPU backend counts the key tiles a CTA walks by class; nothing on the GPU.
__device__ __forceinline__ void trace_key_tile(int) {}

namespace fwd {

__device__ __forceinline__ uint32_t smem_u32(const void *p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared. With valid == false nothing is read and the 16 bytes
// are zero-filled (src-size 0), which is how rows past the end of Q, K or V become
// zeros: finite scores and a zero V row, so masked keys cannot bring in NaN.
__device__ __forceinline__ void cp_async_16(uint32_t dst, const void *src, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(valid ? 16 : 0)
                 : "memory");
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }

// Waits until at most N committed groups of this thread are still in flight; other
// threads' copies become visible only after a following __syncthreads().
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// Four 8x8 matrices of 16-bit elements; lane i gives the address of row i % 8 of
// matrix i / 8 and receives, in r[j], row lane / 4, columns 2 * (lane % 4) + {0, 1}
// of matrix j. volatile: the shared buffers are rewritten between key tiles, so a
// load must never be merged with, or hoisted above, an earlier one at the same address.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

// The same with every matrix transposed: lane receives column lane / 4, rows
// 2 * (lane % 4) + {0, 1}. Turns row-major V into the col-major B operand.
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

// c += a * b for one m16n8k16 tile. a: 16x16 row-major (a[0] rows 0-7 cols 0-7,
// a[1] rows 8-15 cols 0-7, a[2] rows 0-7 cols 8-15, a[3] rows 8-15 cols 8-15, each
// register two adjacent columns); b: 16x8 col-major (b0 k 0-7, b1 k 8-15); c: lane
// holds rows lane / 4 (c[0], c[1]) and lane / 4 + 8 (c[2], c[3]), columns
// 2 * (lane % 4) + {0, 1}.
template <typename Elem>
__device__ __forceinline__ void mma_16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    if constexpr (std::is_same_v<Elem, __half>) {
        asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
            "{%0, %1, %2, %3};\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    } else {
        static_assert(std::is_same_v<Elem, __nv_bfloat16>, "f16 or bf16");
        asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
            "{%0, %1, %2, %3};\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
}

// Two floats rounded to nearest into one register, lo in the low half: the
// element order of an mma fragment register and of memory.
template <typename Elem>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
    uint32_t r;
    if constexpr (std::is_same_v<Elem, __half>) {
        asm("cvt.rn.f16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
    } else {
        static_assert(std::is_same_v<Elem, __nv_bfloat16>, "f16 or bf16");
        asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
    }
    return r;
}

// 2^x on the SFU; exact enough for softmax and 2^-inf = +0, which keeps masked
// scores out of the row sum.
__device__ __forceinline__ float exp2_approx(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

}  // namespace fwd
}  // namespace maskattn
#include "prims/sm90.cuh"
