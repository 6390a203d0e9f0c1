// The box of a tile-mode TMA load (cp.async.bulk.tensor ... .tile), as a pure map
// from a CpuTensorMap and the load's coordinates to (shared-memory offset, global
// address) pairs. The runtime's TMA room moves the bytes, applies the swizzle and
// completes the transactions; this file only says which element goes where. The
// rules and the PTX ISA sections they follow ("Tensor Data Objects" in the memory
// consistency / state spaces chapters and cp.async.bulk.tensor):
//   - "Tensor" / "Tensor dimension, size and format": dimension 0 is contiguous; the
//     address of element (c0, ..., cr-1) is base + c0 * elemsize + sum ci * stride[i-1].
//   - "Bounding Box": the box starts at the load's tensor coordinates (signed 32-bit)
//     and spans boxDim[i] elements in dimension i; in tile mode every element of it is
//     traversed (element strides of 1: the launch plans use no others).
//   - "Out of Bound Access": an element with any coordinate < 0 or >= the dimension's
//     size is not read; it is written to shared memory as zero, or as NaN when the
//     map asks for the NaN fill.
//   - cp.async.bulk.tensor: the box lands in shared memory densely, row-major with
//     dimension 0 innermost, OOB elements included, and the complete-tx count of the
//     mbarrier is the box's full byte size.
//   - "Tensor-map" restrictions (cuTensorMapEncodeTiled): rank 1..5, boxDim 1..256,
//     boxDim[0] * elemsize a multiple of 16 bytes and, with a swizzle, at most the
//     swizzle's span (32, 64 or 128 bytes); 16-byte aligned base and strides.
#include <stddef.h>

#include "cpu/sm90_isa.h"

namespace maskattn {
namespace cpu {
namespace sm90 {

// The Rust mirror (src/launch/tensor_map.rs) writes these offsets; both sides pin them.
static_assert(offsetof(CpuTensorMap, rank) == 4 && offsetof(CpuTensorMap, oob_nan) == 7, "CpuTensorMap header");
static_assert(offsetof(CpuTensorMap, base) == 8 && offsetof(CpuTensorMap, dims) == 16, "CpuTensorMap base, dims");
static_assert(offsetof(CpuTensorMap, strides) == 56 && offsetof(CpuTensorMap, box) == 88, "CpuTensorMap strides, box");
static_assert(sizeof(CpuTensorMap) == 112, "CpuTensorMap size");

// Elements of the box (1..256^5: no overflow in 64 bits).
static uint64_t box_elements(const CpuTensorMap &m) {
    uint64_t n = 1;
    for (int i = 0; i < m.rank; ++i) n *= m.box[i];
    return n;
}

const char *check_tensor_map(const CpuTensorMap &m) {
    if (m.magic != kCpuTensorMapMagic)
        return "the tensor map was not encoded by the CPU backend (Backend::tensor_map); a driver's CUtensorMap or "
               "uninitialised bytes?";
    if (m.rank < 1 || m.rank > 5) return "tensor map rank outside 1..5";
    if (m.elem_bytes != 1 && m.elem_bytes != 2 && m.elem_bytes != 4 && m.elem_bytes != 8)
        return "tensor map element size is not 1, 2, 4 or 8 bytes";
    if (m.swizzle > static_cast<uint8_t>(Swizzle::k128B)) return "tensor map swizzle mode is not none/32B/64B/128B";
    if (m.oob_nan > 1 || (m.oob_nan && m.elem_bytes != 2 && m.elem_bytes != 4))
        return "tensor map NaN fill needs a 2- or 4-byte floating-point element";
    if (m.base % 16 != 0) return "tensor map base address is not 16-byte aligned";
    for (int i = 0; i < m.rank; ++i) {
        if (m.dims[i] == 0 || m.dims[i] > (uint64_t{1} << 32)) return "tensor map dimension outside 1..2^32";
        if (m.box[i] == 0 || m.box[i] > 256) return "tensor map box dimension outside 1..256";
        if (i > 0 && (m.strides[i - 1] % 16 != 0 || m.strides[i - 1] >= (uint64_t{1} << 40)))
            return "tensor map stride not a multiple of 16 below 2^40";
    }
    const uint32_t inner = m.box[0] * m.elem_bytes;
    if (inner % 16 != 0) return "tensor map box inner dimension is not a multiple of 16 bytes";
    if (m.swizzle != 0 && inner > (16u << m.swizzle)) return "tensor map box inner dimension exceeds the swizzle span";
    // No shared memory holds more (box_bytes' result type and mbarrier tx counts).
    if (box_elements(m) * m.elem_bytes > UINT32_MAX) return "tensor map box larger than 4 GiB";
    return nullptr;
}

uint32_t box_bytes(const CpuTensorMap &m) { return static_cast<uint32_t>(box_elements(m) * m.elem_bytes); }

void visit_box(const CpuTensorMap &m, const int32_t *coords, BoxVisitor visit, void *ctx) {
    // k: the element's index inside the box (a counter, dimension 0 fastest, which is
    // the order of the dense destination); c = coords + k: its tensor coordinates.
    uint32_t k[5] = {0, 0, 0, 0, 0};
    const uint64_t total = box_elements(m);
    for (uint64_t n = 0; n < total; ++n) {
        bool inside = true;
        uint64_t offset = 0;
        for (int i = 0; i < m.rank; ++i) {
            const int64_t c = static_cast<int64_t>(coords[i]) + k[i];
            if (c < 0 || static_cast<uint64_t>(c) >= m.dims[i]) {
                inside = false;
                break;
            }
            offset += static_cast<uint64_t>(c) * (i == 0 ? m.elem_bytes : m.strides[i - 1]);
        }
        const unsigned char *src = inside ? reinterpret_cast<const unsigned char *>(m.base + offset) : nullptr;
        visit(ctx, static_cast<uint32_t>(n * m.elem_bytes), src);
        for (int i = 0; i < m.rank && ++k[i] == m.box[i]; ++i) k[i] = 0;
    }
}

}  // namespace sm90
}  // namespace cpu
}  // namespace maskattn
