// wgmma shared-memory matrix descriptors, built by the kernels (both builds): the
// 64-bit encoding of the PTX ISA's "Matrix Descriptor Format" (start address,
// leading and stride dimension byte offsets, each >> 4 in 14 bits; the swizzle mode
// in bits 62-63). The base offset (bits 49-51) stays 0: every swizzled buffer starts
// on its pattern's boundary (1,024 bytes for 128-byte swizzle).
#pragma once

#include <stdint.h>

namespace maskattn {
namespace sm90 {

// The descriptor's encoding of the swizzle mode.
enum class SmemSwizzle : uint32_t { kNone = 0, k128B = 1, k64B = 2, k32B = 3 };

__host__ __device__ constexpr uint64_t make_smem_desc(uint32_t smem_addr, uint32_t leading_bytes,
                                                      uint32_t stride_bytes, SmemSwizzle swizzle) {
    return uint64_t((smem_addr & 0x3ffffu) >> 4) | uint64_t((leading_bytes >> 4) & 0x3fffu) << 16 |
           uint64_t((stride_bytes >> 4) & 0x3fffu) << 32 | uint64_t(swizzle) << 62;
}

// The descriptor of the same matrix `bytes` further on (the next k16 slice): only
// the start address field moves.
__host__ __device__ constexpr uint64_t advance_smem_desc(uint64_t desc, uint32_t bytes) {
    return desc + uint64_t(bytes >> 4);
}

}  // namespace sm90
}  // namespace maskattn
