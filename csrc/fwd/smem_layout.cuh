// Shared-memory layout of the Q, K and V tiles, their cp.async loads, and the
// per-lane ldmatrix addresses into them.
//
// A tile is ROWS x D 16-bit elements, stored as D / 16 column blocks of 16
// elements (one k16 step of the mma, two 16-byte chunks), each block row after
// row. Chunk c (0 or 1) of row r of a block is stored at c ^ ((r / 4) % 2): four
// block rows fill one 128-byte line of the 32 banks, and the XOR moves the
// second four rows of every 8 to the other half of their chunk pair. So 8
// consecutive rows (aligned to 8) of one chunk column, which is what one
// ldmatrix matrix reads, land on 2 * (r % 4) + (c ^ ((r / 4) % 2)): 8 distinct
// 16-byte bank groups, conflict-free without padding.
//
// Why blocks of one k16 step: an ldmatrix block at rows row0 + 0..15 and k step
// ks is then the lane's address at (0, 0) plus row0 * 32 + ks * ROWS * 32 (for
// row0 a multiple of 8), a compile-time immediate. Wider blocks make the swizzle
// depend on ks, which costs one register per k step and lane (D = 128 has none to
// spare) or an XOR per ldmatrix.
#pragma once

#include "prims.cuh"

namespace maskattn {
namespace fwd {

// The smallest head dim the class of head dim D serves (params.h: classes 64, 96, 128,
// 256): the columns below it are real in every call of a class-D kernel.
template <int D>
constexpr int kClassMinHeadDim = D == 64 ? 8 : D == 96 ? 72 : D == 128 ? 104 : 136;

template <int ROWS, int D>
struct SwizzledTile {
    static constexpr int kRows = ROWS;
    static constexpr int kChunks = D / 8;  // 16-byte chunks per row
    static constexpr int kBytes = ROWS * D * 2;
    static_assert(D % 32 == 0 && ROWS % 16 == 0, "whole 4-chunk columns of the loads, 16-row ldmatrix blocks");

    // Byte offset of chunk `chunk` (elements 8 * chunk .. 8 * chunk + 7) of row `row`.
    __device__ __forceinline__ static uint32_t offset(int row, int chunk) {
        const uint32_t r = uint32_t(row), c = uint32_t(chunk);
        return (((c / 2) * ROWS + r) * 2 + ((c % 2) ^ ((r / 4) % 2))) * 16;
    }
};

// Issues the cp.async copies of rows first_row .. first_row + kRows - 1 of a
// tensor (row r at base + r * row_stride, contiguous within a row) into a Tile;
// rows at or past end_row, and chunks at or past column end_col (a head dim narrower
// than the tile's: its class pads it with zeros, which add nothing to a dot product
// and give output columns that are never stored), are zero-filled. Every thread of
// the block must call it.
//
// A warp copies 8 rows x 4 chunks (64 contiguous bytes of each row) at a time,
// lane l taking row l % 8 and chunk l / 8: each 8-lane phase writes one chunk
// column of 8 consecutive rows, the conflict-free pattern above. A thread keeps
// its row modulo 8 and its chunk modulo 4, so every copy after the first is at a
// constant offset from its first; each pass computes its own 64-bit row offset
// from the (per-tile) row index, leaving nothing loop-invariant for the compiler
// to hoist out of the key loop into registers. A tile of fewer rows than the
// block's warps cover (8 each) splits its 4-chunk column groups among kColSplit
// sets of warps instead.
template <class Tile, int kThreads, int kMinCols, typename Elem>
__device__ __forceinline__ void load_tile_async(uint32_t tile, const Elem *__restrict__ base, int64_t row_stride,
                                                int32_t first_row, int32_t end_row, int32_t end_col, int tid) {
    constexpr int kBlockRows = kThreads / 4;
    constexpr int kColSplit = kBlockRows > Tile::kRows ? kBlockRows / Tile::kRows : 1;
    constexpr int kRowsPerPass = kBlockRows / kColSplit;
    constexpr int kQuads = Tile::kChunks / 4 / kColSplit;  // column groups per thread and pass
    static_assert(kThreads % 32 == 0 && Tile::kRows % kRowsPerPass == 0 && Tile::kChunks % (4 * kColSplit) == 0,
                  "whole passes of 8 rows x 4 chunks per warp");
    // With kColSplit == 1 this is exactly warp * 8 + lane % 8 and chunk lane / 8: the
    // compiler cannot know that tid < kThreads, and the wider form costs a register.
    const int warp = tid / 32, warps_per_set = kRowsPerPass / 8;
    const int r = (kColSplit == 1 ? warp : warp % warps_per_set) * 8 + tid % 8;
    // unsigned: the column offset then needs no 64-bit register
    const uint32_t c = (tid % 32) / 8 + (kColSplit == 1 ? 0u : 4 * uint32_t(warp / warps_per_set));
    const uint32_t dst = tile + Tile::offset(r, c);
    // 8 c + tid % 8: below end_col (a multiple of 8) exactly when chunk c is. From tid,
    // not c, so that it needs no register of its own across a caller's loop.
    const int32_t col = tid % 32 + (kColSplit == 1 ? 0 : 32 * (warp / warps_per_set));
#pragma unroll
    for (int pass = 0; pass < Tile::kRows / kRowsPerPass; ++pass) {
        const int32_t row = first_row + pass * kRowsPerPass + r;
        const bool valid = row < end_row;
        // A zero-filled row reads nothing but still gets an address inside the tensor.
        const Elem *src = base + c * 8 + (valid ? int64_t(row) * row_stride : 0);
        // offset(r + R, c + C) = offset(r, c) + offset(R, C) for R % 8 == 0, C % 4 == 0.
#pragma unroll
        for (int quad = 0; quad < kQuads; ++quad) {
            // A padding chunk (zero-filled, nothing read) keeps the immediate offset of the
            // others: a select per chunk costs the D = 128 kernels spills.
            // Chunks below kMinCols are real in every head dim of the class: no test, no
            // register (the class-128 backward has none to spare).
            const bool always = (quad + 1) * 32 * kColSplit <= kMinCols;  // unrolled: a constant
            const bool copy = valid && (always || col + quad * 32 * kColSplit < end_col);
            cp_async_16(dst + Tile::offset(pass * kRowsPerPass, quad * 4 * kColSplit), src + quad * 32 * kColSplit,
                        copy);
        }
    }
}

// The shared address one lane gives ldmatrix.x4 to read 16x16 blocks of a Tile:
// lane_row (0..15) and lane_chunk (0 or 1) are the row and 8-column half of the
// block this lane addresses, which fixes the order of the four matrices in the
// destination registers. mma.sync takes its A and B operands as aligned register
// tuples, so each tile is read in the order its operand wants and no register
// is moved.
template <class Tile>
struct LdsmAddr {
    uint32_t lane;  // shared address of the lane's row and chunk in the block at (row_base, 0)

    __device__ __forceinline__ LdsmAddr(uint32_t tile, int row_base, int lane_row, int lane_chunk)
        : lane(tile + Tile::offset(row_base + lane_row, lane_chunk)) {}

    // The block at rows row_base + row0 + 0..15, chunks chunk0 and chunk0 + 1 (row0
    // a multiple of 8, chunk0 even: the lane's swizzle is the same as at (0, 0)).
    __device__ __forceinline__ uint32_t operator()(int row0, int chunk0) const {
        return lane + Tile::offset(row0, chunk0);
    }

    // The same lanes in a copy of the tile `bytes` further on (the other buffer).
    __device__ __forceinline__ LdsmAddr shifted(uint32_t bytes) const {
        LdsmAddr a = *this;
        a.lane += bytes;
        return a;
    }
};

// Matrices in the order (rows 0-7, chunk 0), (rows 8-15, chunk 0), (rows 0-7,
// chunk 1), (rows 8-15, chunk 1): the A operand of m16n8k16 from a row-major tile
// (Q), and with .trans the B operands (b0, b1) of two n8 fragments from a [k][n]
// tile (V): registers 0, 1 for columns 0-7 and 2, 3 for columns 8-15.
template <class Tile>
__device__ __forceinline__ LdsmAddr<Tile> ldsm_a_order(uint32_t tile, int row_base, int lane) {
    return LdsmAddr<Tile>(tile, row_base, lane % 16, lane / 16);
}

// Matrices in the order (rows 0-7, chunk 0), (rows 0-7, chunk 1), (rows 8-15,
// chunk 0), (rows 8-15, chunk 1): the B operands (b0, b1) of two n8 fragments from
// an [n][k] tile (K), registers 0, 1 for rows 0-7 and 2, 3 for rows 8-15.
template <class Tile>
__device__ __forceinline__ LdsmAddr<Tile> ldsm_b_order(uint32_t tile, int lane) {
    return LdsmAddr<Tile>(tile, 0, lane % 8 + (lane / 16) * 8, (lane / 8) % 2);
}

}  // namespace fwd
}  // namespace maskattn
