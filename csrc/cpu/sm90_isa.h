// The pure parts of the sm_90 instructions the CPU backend emulates: address maps and
// fragment layouts, written from the PTX ISA, with no runtime state. The runtime's
// rooms for wgmma (isa_sm90_wgmma.cpp) and TMA (isa_sm90_tma.cpp) call them; their
// asynchrony, poison and racecheck live there, not here.
#pragma once

#include <stddef.h>
#include <stdint.h>

namespace maskattn {
namespace cpu {
namespace sm90 {

// The swizzle modes of a shared-memory matrix descriptor and of a tensor map.
enum class Swizzle : uint8_t { kNone = 0, k32B = 1, k64B = 2, k128B = 3 };

// `addr` (an absolute shared-memory byte address) with the swizzle applied: the
// 16-byte chunk index, bits [4, 4+b), XORed with the 128-byte line index within the
// pattern, bits [7, 7+b); b = 1, 2, 3 for 32B, 64B, 128B (patterns of 256, 512,
// 1,024 bytes). The same map serves wgmma operands and TMA destinations.
uint32_t swizzle_address(uint32_t addr, Swizzle s);

// A wgmma shared-memory matrix descriptor, decoded (PTX ISA, "Matrix Descriptor
// Format"): byte values, not the encoded >> 4 fields.
struct SmemDesc {
    uint32_t start;          // start address, bytes
    uint32_t leading_bytes;  // leading dimension byte offset
    uint32_t stride_bytes;   // stride dimension byte offset
    uint32_t base_offset;    // matrix base offset (3 bits)
    Swizzle swizzle;
};
// False (and `why` set) when the descriptor uses a reserved encoding.
bool decode_smem_desc(uint64_t desc, SmemDesc &out, const char **why);

// Shared byte address of element (mn, k) of a wgmma operand of 16-bit elements
// described by `d`: for A, mn is the row (0..63); for B, the column n (0..N-1); k in
// 0..15. `mn_major`: the operand is stored MN-major (imm-trans = 1), else K-major.
uint32_t operand_address(const SmemDesc &d, bool mn_major, int mn, int k);

// The accumulator of wgmma.m64nNk16 (f32): thread t (0..127 of the warpgroup),
// register i (0..N/2-1) holds D[row][col].
void accumulator_coord(int t, int i, int &row, int &col);

// A from registers (16-bit elements): thread t, register r (0..3), half h (0: low 16
// bits, 1: high) holds A[row][k].
void a_register_coord(int t, int r, int h, int &row, int &k);

// The CPU backend's own encoding of a tensor map, in the same 128-byte, 64-byte
// aligned kernel parameter where the GPU's driver (cuTensorMapEncodeTiled) writes
// the CUtensorMap. Written by the launch plan (src/launch), read by the TMA
// emulation. Dimension 0 is the innermost (contiguous) one.
struct CpuTensorMap {
    uint32_t magic;  // kCpuTensorMapMagic
    uint8_t rank;    // 1..5
    uint8_t elem_bytes;
    uint8_t swizzle;   // Swizzle
    uint8_t oob_nan;   // 0: out-of-bounds elements read as zero; 1: as NaN (f32/f16 only)
    uint64_t base;     // global address of element (0, ..., 0)
    uint64_t dims[5];  // elements per dimension
    uint64_t strides[4];  // bytes between consecutive indices of dimensions 1..rank-1
    uint32_t box[5];      // elements per dimension of one copy
};
static_assert(sizeof(CpuTensorMap) <= 128, "a tensor map parameter is 128 bytes");
constexpr uint32_t kCpuTensorMapMagic = 0x414d544du;  // "MTMA"

// A tile-mode load (cp.async.bulk.tensor) of `m` at box coordinates `coords` (rank of
// them, innermost first, signed: a box may start before the tensor or run past it),
// element by element in the order it lands in shared memory: the box row-major,
// dimension 0 contiguous, dense. `visit(ctx, dst, src)` gets the element's byte
// offset from the destination before any swizzle (the caller applies
// swizzle_address) and its global address, or null when it lies outside the tensor
// and reads as the map's fill (zero, or NaN with oob_nan). `m` passed
// check_tensor_map. Written in csrc/cpu/sm90_tma_box.cpp.
using BoxVisitor = void (*)(void *ctx, uint32_t dst, const unsigned char *src);
void visit_box(const CpuTensorMap &m, const int32_t *coords, BoxVisitor visit, void *ctx);
// Null when `m` is a map the launch plan wrote with a valid box, else why not.
const char *check_tensor_map(const CpuTensorMap &m);
// The bytes one load of `m` writes to shared memory and completes on its mbarrier
// as transactions: the whole box, out-of-bounds elements included.
uint32_t box_bytes(const CpuTensorMap &m);

}  // namespace sm90
}  // namespace cpu
}  // namespace maskattn
