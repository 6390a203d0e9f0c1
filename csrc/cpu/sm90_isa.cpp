// The pure sm_90 ISA maps of csrc/cpu/sm90_isa.h, written from the PTX ISA's
// wgmma sections (9.7.15.5.1 "Register Fragments and Shared Memory Matrix Layouts";
// the section numbers are those of PTX ISA 8.x/9.x) and cross-checked by reading
// CUTLASS's CuTe (cute/swizzle.hpp, cute/arch/mma_sm90_desc.hpp,
// cute/atom/mma_traits_sm90_gmma.hpp), where the two agree on every point used here.
#include "cpu/sm90_isa.h"

namespace maskattn {
namespace cpu {
namespace sm90 {

// PTX ISA, "Shared Memory Matrix Layout" (the swizzling modes and their repeating
// patterns: 256, 512 and 1,024 bytes for 32B, 64B and 128B) and the tensor copy's
// "Tensor-map swizzling modes". The pattern is a function of the absolute shared
// address, which is why the descriptor's start address can move by 32 bytes to the
// next k16 slice inside a swizzled row and why a buffer not starting on a pattern
// boundary needs the descriptor's base offset. Bits [4, 4+b) (the 16-byte chunk
// within a 2^b-chunk span) are XORed with bits [7, 7+b) (the 128-byte line within
// the pattern), b = 1, 2, 3: CuTe's Swizzle<b,4,3> on byte addresses. So for 64B
// two consecutive 64-byte rows share one XOR value, and for 32B four 32-byte rows.
uint32_t swizzle_address(uint32_t addr, Swizzle s) {
    const uint32_t b = uint32_t(s);  // kNone 0, k32B 1, k64B 2, k128B 3
    const uint32_t mask = (1u << b) - 1;
    return addr ^ (((addr >> 7) & mask) << 4);
}

// PTX ISA, "Matrix Descriptor Format" (9.7.15.5.1.2.2 in 8.x): bits 0-13 start
// address, 16-29 leading dimension byte offset, 32-45 stride dimension byte offset,
// each encoded as (x & 0x3ffff) >> 4; 49-51 matrix base offset; 62-63 swizzle mode
// (0 none, 1 128B, 2 64B, 3 32B). CuTe's GmmaDescriptor bitfields agree.
bool decode_smem_desc(uint64_t desc, SmemDesc &out, const char **why) {
    out.start = uint32_t(desc & 0x3fff) << 4;
    out.leading_bytes = uint32_t(desc >> 16 & 0x3fff) << 4;
    out.stride_bytes = uint32_t(desc >> 32 & 0x3fff) << 4;
    out.base_offset = uint32_t(desc >> 49 & 0x7);
    static const Swizzle kFromField[4] = {Swizzle::kNone, Swizzle::k128B, Swizzle::k64B, Swizzle::k32B};
    out.swizzle = kFromField[desc >> 62];
    // Bits 14-15, 30-31, 46-48 and 52-61 belong to no field of the wgmma descriptor
    // (sm_100's tcgen05 descriptor gives some of them a meaning; wgmma does not). A
    // set one here is most likely a carry out of the start address field of an
    // advance_smem_desc (csrc/hopper/smem_desc.cuh adds to the whole descriptor).
    const uint64_t fields = 0x3fffull | 0x3fffull << 16 | 0x3fffull << 32 | 0x7ull << 49 | 0x3ull << 62;
    if (desc & ~fields) {
        *why = "wgmma descriptor: bits outside its fields are set (a carry out of the start address?)";
        return false;
    }
    // The ISA says the base offset is (pattern start address >> 7) & 7 when the
    // swizzle pattern does not start on its 256/512/1,024-byte boundary, but not how
    // the hardware combines it with the address bits; CuTe and our encoder
    // (make_smem_desc) always write 0. Rather than guess, it is refused.
    if (out.base_offset != 0) {
        *why = "wgmma descriptor: a non-zero matrix base offset (bits 49-51) is not emulated";
        return false;
    }
    return true;
}

// PTX ISA, "Shared Memory Matrix Layout" (the swizzle atoms of its table "Various
// combinations of swizzling mode, leading dimension and swizzle-atom layout", and
// the K-major / MN-major figures) and "Strides" (what LBO and SBO measure). In units
// of 16 bytes (8 elements of 16 bits), an atom is 8 x W (K-major: 8 MN rows, W
// chunks along K) or W x 8 (MN-major: W chunks along MN, 8 K rows), W = 1, 2, 4, 8
// for none, 32B, 64B, 128B; inside it the rows are W * 16 bytes apart. The atoms
// tile the operand with the strides:
// - K-major: SBO between groups of 8 MN rows; LBO between the two 8-element k
//   halves only without swizzle (with a swizzle the k16 slice, 32 bytes, lies
//   inside one swizzled row, and the ISA says LBO is unused, "assumed 1").
// - MN-major without swizzle: SBO between groups of 8 MN elements, LBO between the
//   two groups of 8 k rows.
// - MN-major swizzled: LBO between atoms along MN (every W * 8 elements), SBO
//   between the two groups of 8 k rows: the roles swap relative to the above.
// CuTe's make_gmma_desc (canonical layouts "Swizzle<b,4,3> o smem_ptr o ...") sets
// the same fields. The swizzle applies to the final absolute address.
uint32_t operand_address(const SmemDesc &d, bool mn_major, int mn, int k) {
    const uint32_t w = d.swizzle == Swizzle::kNone ? 1 : 1u << uint32_t(d.swizzle);
    const uint32_t m = uint32_t(mn), kk = uint32_t(k);
    uint32_t linear;
    if (!mn_major) {
        const uint32_t in_atom = m % 8 * (16 * w) + (w == 1 ? kk % 8 * 2 : kk * 2);
        const uint32_t k_half = w == 1 ? kk / 8 * d.leading_bytes : 0;
        linear = d.start + m / 8 * d.stride_bytes + k_half + in_atom;
    } else {
        const uint32_t per_atom = 8 * w;  // MN elements in one atom's row
        const uint32_t in_atom = kk % 8 * (16 * w) + m % per_atom * 2;
        const uint32_t mn_stride = w == 1 ? d.stride_bytes : d.leading_bytes;
        const uint32_t k_stride = w == 1 ? d.leading_bytes : d.stride_bytes;
        linear = d.start + m / per_atom * mn_stride + kk / 8 * k_stride + in_atom;
    }
    return swizzle_address(linear, d.swizzle);
}

// PTX ISA, "Register Fragments" for wgmma .m64nNk16, figure "WGMMA .m64nNk16 register
// fragment layout for accumulator matrix D": warp w of the warpgroup holds rows
// 16w..16w+15; in it, lane = 4 g + q holds rows g and g + 8 and columns 8 j + 2 q +
// {0, 1} for j = 0..N/8-1, in the order d[4 j + 2 r + c] = D[16w + g + 8r][8j + 2q + c]
// (the mma.m16n8 accumulator repeated along N). CuTe's CLayout_64xN agrees.
void accumulator_coord(int t, int i, int &row, int &col) {
    const int w = t / 32, g = t % 32 / 4, q = t % 4;
    row = 16 * w + g + 8 * (i / 2 % 2);
    col = 8 * (i / 4) + 2 * q + i % 2;
}

// PTX ISA, same section, figure "WGMMA .m64nNk16 register fragment layout for matrix
// A" (16-bit types): warp w holds rows 16w..16w+15 in the mma.m16n8k16 A layout:
// register r, half h holds A[16w + g + 8 (r % 2)][2q + h + 8 (r / 2)]. CuTe's
// ALayout_64x16 agrees.
void a_register_coord(int t, int r, int h, int &row, int &k) {
    const int w = t / 32, g = t % 32 / 4, q = t % 4;
    row = 16 * w + g + 8 * (r % 2);
    k = 2 * q + h + 8 * (r / 2);
}

}  // namespace sm90
}  // namespace cpu
}  // namespace maskattn
