// PTX wrappers of the sm_80 instructions the XAttention scoring kernel is built
// from: cp.async (global -> shared with zero fill), ldmatrix (shared -> mma
// fragments) and mma.sync m16n8k16 with f32 accumulation. Kept in their own
// namespace (maskattn::xattn) so that the unity build never sees two definitions.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include <type_traits>

namespace maskattn {
namespace xattn {

__device__ __forceinline__ uint32_t smem_addr(const void *p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared; with valid == false nothing is read and the 16 bytes
// are zero-filled (src-size 0): padded positions of Q and K become exact zeros.
__device__ __forceinline__ void cp_async_16_zfill(uint32_t dst, const void *src, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(valid ? 16 : 0)
                 : "memory");
}

__device__ __forceinline__ void cp_async_commit_group() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }

// At most N of this thread's committed groups still in flight. Other threads'
// copies are visible only after a following __syncthreads().
template <int N>
__device__ __forceinline__ void cp_async_wait_group() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// Four 8x8 matrices of 16-bit elements: lane i addresses row i % 8 of matrix i / 8
// and receives, in r[j], row lane / 4, columns 2 * (lane % 4) + {0, 1} of matrix j.
// volatile: the stage buffers are rewritten, loads must stay where they are.
__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

// c += a * b, m16n8k16. a: 16x16 row-major (a[0] rows 0-7 k 0-7, a[1] rows 8-15
// k 0-7, a[2] rows 0-7 k 8-15, a[3] rows 8-15 k 8-15); b: 16x8 col-major (b0 k 0-7,
// b1 k 8-15, lane holds n = lane / 4, k = 2 * (lane % 4) + {0, 1}); c: lane holds
// rows lane / 4 (c[0], c[1]) and lane / 4 + 8 (c[2], c[3]), columns 2 * (lane % 4) + {0, 1}.
template <typename Elem>
__device__ __forceinline__ void mma_m16n8k16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
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

}  // namespace xattn
}  // namespace maskattn
