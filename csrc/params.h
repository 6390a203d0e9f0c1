/* The C ABI shared by the CUDA kernels, the host-compiled mask code and Rust.
 *
 * This header is the single source of truth for every struct that crosses the
 * Rust/C++ boundary: bindgen turns it into src/ffi.rs (committed; the test
 * tests/bindings_fresh.rs regenerates it and fails when it is stale). Plain C,
 * fixed-width types only, so the layout is identical for nvcc, g++ and rustc.
 */
#ifndef MASKATTN_PARAMS_H
#define MASKATTN_PARAMS_H

#include <stdint.h>

/* Tile classes of a (query tile, key tile) pair. */
#define MASKATTN_TILE_EMPTY 0   /* no visible pair: skipped, K/V not even loaded */
#define MASKATTN_TILE_FULL 1    /* every pair visible: no per-element mask */
#define MASKATTN_TILE_PARTIAL 2 /* mixed: the per-element mask is applied */

/* Forward kernel geometry (csrc/flash_fwd.cu static_asserts its tiles against
 * these, the Rust launcher reads them through bindgen). A CTA of
 * MASKATTN_FWD_THREADS threads (4 warps, 32 query rows each) handles
 * MASKATTN_FWD_BLOCK_M query rows of one (batch, head) and walks key tiles of
 * MASKATTN_FWD_BLOCK_N_D* keys. Dynamic shared memory (the kernel uses no static
 * shared memory): one Q, one K and one V tile of 2-byte elements,
 * (BLOCK_M + 2 * BLOCK_N) * D * 2, then the tile's row intervals, BLOCK_M * 16,
 * and 256 bytes of per-CTA values. */
#define MASKATTN_FWD_THREADS 128
#define MASKATTN_FWD_BLOCK_M 128
#define MASKATTN_FWD_BLOCK_N_D64 64
#define MASKATTN_FWD_BLOCK_N_D96 64
#define MASKATTN_FWD_BLOCK_N_D128 64
#define MASKATTN_FWD_SMEM_D64 ((128 + 2 * 64) * 64 * 2 + 128 * 16 + 256)
#define MASKATTN_FWD_SMEM_D96 ((128 + 2 * 64) * 96 * 2 + 128 * 16 + 256)
#define MASKATTN_FWD_SMEM_D128 ((128 + 2 * 64) * 128 * 2 + 128 * 16 + 256)

/* Min/max, over the rows of a query tile, of each of the rows' two half-open key
 * intervals [s0, e0) U [s1, e1). Only rows whose interval j is non-empty enter
 * the min/max of interval j, so the encoding of an empty interval never widens
 * the summary; nonempty[j] counts them so FULL can demand "every row". */
typedef struct MaskattnTileSummary {
    int32_t min_start[2];
    int32_t max_start[2];
    int32_t min_end[2];
    int32_t max_end[2];
    int32_t nonempty[2];
    int32_t rows;
} MaskattnTileSummary;

/* Forward attention: O = softmax(scale * Q K^T + mask) V and LSE, layout
 * [B, L, H, D] with element strides (the last dimension is contiguous). */
typedef struct MaskattnFwdParams {
    const void *q;
    const void *k;
    const void *v;
    void *o;
    float *lse;                 /* [batch, heads_q, len_q], natural log */
    const int32_t *intervals;   /* [len_q][4]: s0, e0, s1, e1 */
    const int32_t *tile_order;  /* query tiles in launch order, heaviest first */
    int64_t q_batch_stride, q_row_stride, q_head_stride;
    int64_t k_batch_stride, k_row_stride, k_head_stride;
    int64_t v_batch_stride, v_row_stride, v_head_stride;
    int64_t o_batch_stride, o_row_stride, o_head_stride;
    int32_t batch;
    int32_t heads_q;
    int32_t heads_kv;
    int32_t len_q;
    int32_t len_k;
    int32_t head_dim;
    float scale;                /* softmax scale, applied to Q K^T */
    float scale_log2;           /* scale * log2(e): the kernel works in base 2 */
} MaskattnFwdParams;

#endif /* MASKATTN_PARAMS_H */
