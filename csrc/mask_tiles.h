// Tile classification of interval masks: the one piece of mask logic the kernels
// and the host share. Compiled by nvcc into every kernel and by the host C++
// compiler into the crate (csrc/host/mask_tiles_host.cpp), where the Rust tests
// check it against brute force (tests/tiles.rs) and src/tiles.rs builds the walks
// the kernels' work models are checked against, so the code the GPU runs is the code
// CI tests.
//
// A mask is, per query row, at most two half-open key intervals
// [s0, e0) U [s1, e1); an interval with s >= e is empty.
#pragma once

#include "params.h"

#if defined(__CUDACC__)
#define MASKATTN_HD __host__ __device__ __forceinline__
#else
#define MASKATTN_HD static inline
#endif

namespace maskattn {

constexpr int32_t kIntMax = 0x7fffffff;
constexpr int32_t kIntMin = -kIntMax - 1;

MASKATTN_HD int32_t imin(int32_t a, int32_t b) { return a < b ? a : b; }
MASKATTN_HD int32_t imax(int32_t a, int32_t b) { return a > b ? a : b; }

// The summary of no rows: the identity of summary_merge.
MASKATTN_HD MaskattnTileSummary summary_empty() {
    MaskattnTileSummary s;
    for (int j = 0; j < 2; ++j) {
        s.min_start[j] = kIntMax;
        s.max_start[j] = kIntMin;
        s.min_end[j] = kIntMax;
        s.max_end[j] = kIntMin;
        s.nonempty[j] = 0;
    }
    s.rows = 0;
    return s;
}

// Adds one row; iv points at its four ints s0, e0, s1, e1.
MASKATTN_HD void summary_add_row(MaskattnTileSummary &s, const int32_t *iv) {
    for (int j = 0; j < 2; ++j) {
        const int32_t st = iv[2 * j], en = iv[2 * j + 1];
        if (st < en) {
            s.min_start[j] = imin(s.min_start[j], st);
            s.max_start[j] = imax(s.max_start[j], st);
            s.min_end[j] = imin(s.min_end[j], en);
            s.max_end[j] = imax(s.max_end[j], en);
            s.nonempty[j] += 1;
        }
    }
    s.rows += 1;
}

// Associative and commutative, so a tile's rows can be reduced in any order
// (sequentially on the host, by warp shuffles on the device).
MASKATTN_HD MaskattnTileSummary summary_merge(const MaskattnTileSummary &a,
                                              const MaskattnTileSummary &b) {
    MaskattnTileSummary s;
    for (int j = 0; j < 2; ++j) {
        s.min_start[j] = imin(a.min_start[j], b.min_start[j]);
        s.max_start[j] = imax(a.max_start[j], b.max_start[j]);
        s.min_end[j] = imin(a.min_end[j], b.min_end[j]);
        s.max_end[j] = imax(a.max_end[j], b.max_end[j]);
        s.nonempty[j] = a.nonempty[j] + b.nonempty[j];
    }
    s.rows = a.rows + b.rows;
    return s;
}

// Rows [row_begin, row_end) of an interval array [len_q][4].
MASKATTN_HD MaskattnTileSummary summarize_rows(const int32_t *intervals, int32_t row_begin,
                                               int32_t row_end) {
    MaskattnTileSummary s = summary_empty();
    for (int32_t r = row_begin; r < row_end; ++r) summary_add_row(s, intervals + 4 * r);
    return s;
}

// Class of key tile [k0, k1) for the summarized rows. Sufficient conditions only:
// EMPTY and FULL are never claimed wrongly; a tile that is empty or full only
// through a mix of the two intervals is called PARTIAL, which is still correct.
// k1 may exceed len_k (the last tile): no interval reaches past len_k, so such a
// tile is never FULL and the per-element mask removes the keys past the end. The
// bounds are 64-bit because the last tile of a length near 2^31 ends past INT32_MAX.
MASKATTN_HD int32_t classify_key_tile(const MaskattnTileSummary &s, int64_t k0, int64_t k1) {
    bool misses_all = true;
    for (int j = 0; j < 2; ++j) {
        if (s.nonempty[j] == 0) continue;
        if (s.rows > 0 && s.nonempty[j] == s.rows && s.max_start[j] <= k0 && k1 <= s.min_end[j])
            return MASKATTN_TILE_FULL;
        if (!(k1 <= s.min_start[j] || k0 >= s.max_end[j])) misses_all = false;
    }
    return misses_all ? MASKATTN_TILE_EMPTY : MASKATTN_TILE_PARTIAL;
}

// Class of key tile kt of width block_n: keys [kt * block_n, (kt + 1) * block_n).
MASKATTN_HD int32_t classify_tile(const MaskattnTileSummary &s, int32_t kt, int32_t block_n) {
    return classify_key_tile(s, int64_t(kt) * block_n, int64_t(kt + 1) * block_n);
}

// ceil(n / d) for n >= 0, d > 0, without forming n + d - 1 (which overflows near
// INT32_MAX).
MASKATTN_HD int32_t div_ceil(int32_t n, int32_t d) { return n / d + (n % d != 0); }

// Key tiles [*begin, *end) of width block_n that hold every visible key of the
// summarized rows; tiles inside the range may still be EMPTY (a gap between the
// two intervals) and are skipped one by one with classify_key_tile.
MASKATTN_HD void key_tile_range(const MaskattnTileSummary &s, int32_t block_n, int32_t *begin,
                                int32_t *end) {
    int32_t lo = kIntMax, hi = kIntMin;
    for (int j = 0; j < 2; ++j) {
        if (s.nonempty[j] == 0) continue;
        lo = imin(lo, s.min_start[j]);
        hi = imax(hi, s.max_end[j]);
    }
    if (lo >= hi) {
        *begin = 0;
        *end = 0;
        return;
    }
    *begin = lo / block_n;
    *end = div_ceil(hi, block_n);
}

// Is key k visible to the row whose intervals iv points at: the per-element mask
// of PARTIAL tiles. Bitwise operators on purpose: the same truth table as && / ||,
// without a branch per element in the kernels.
MASKATTN_HD bool key_visible(const int32_t *iv, int32_t k) {
    return ((k >= iv[0]) & (k < iv[1])) | ((k >= iv[2]) & (k < iv[3]));
}

}  // namespace maskattn
