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
 * shared memory): one Q tile and two K and two V tiles (double buffer) of 2-byte
 * elements, (BLOCK_M + 4 * BLOCK_N) * D * 2, then the tile's row intervals,
 * BLOCK_M * 16, and 256 bytes of per-CTA values.
 *
 * Head dims: every multiple of 8 up to MASKATTN_MAX_HEAD_DIM runs in the smallest
 * class (64, 96, 128 or 256: the D of the kernels' names and of these constants)
 * that holds it; the kernels read p.head_dim, zero-fill the columns past it on load
 * and store only the columns below it. The class-256 forward has
 * MASKATTN_FWD_THREADS_D256 threads (8 warps of 16 query rows). */
#define MASKATTN_MAX_HEAD_DIM 256
#define MASKATTN_FWD_THREADS 128
#define MASKATTN_FWD_THREADS_D256 256
#define MASKATTN_FWD_BLOCK_M 128
#define MASKATTN_FWD_BLOCK_N_D64 64
#define MASKATTN_FWD_BLOCK_N_D96 64
#define MASKATTN_FWD_BLOCK_N_D128 32
#define MASKATTN_FWD_BLOCK_N_D256 16
#define MASKATTN_FWD_SMEM_D64 ((128 + 4 * 64) * 64 * 2 + 128 * 16 + 256)
#define MASKATTN_FWD_SMEM_D96 ((128 + 4 * 64) * 96 * 2 + 128 * 16 + 256)
#define MASKATTN_FWD_SMEM_D128 ((128 + 4 * 32) * 128 * 2 + 128 * 16 + 256)
#define MASKATTN_FWD_SMEM_D256 ((128 + 4 * 16) * 256 * 2 + 128 * 16 + 256)

/* The Hopper forward kernel (csrc/hopper_fwd.cu, sm_90a: wgmma, TMA, mbarriers; the
 * same MaskattnFwdParams after three tensor maps of Q, K and V). A persistent CTA of
 * MASKATTN_HOPPER_FWD_THREADS threads: warpgroup 0 produces (one warp issues the
 * TMA loads), warpgroups 1 and 2 consume, 64 query rows each of a
 * MASKATTN_HOPPER_FWD_BLOCK_M-row query tile, walking key tiles of
 * MASKATTN_HOPPER_FWD_BLOCK_N keys through a ring of MASKATTN_HOPPER_FWD_STAGES
 * (K, V) stages: a consumer holds two (this tile's V, the next tile's K), so the third
 * is the one the producer fills ahead. Tiles are stored as 64-column chunks of 128-byte swizzled rows (D = 96
 * takes two, the upper half of the second zero-filled by the TMA). Dynamic shared
 * memory: 1,024 bytes to align the buffer to the swizzle's pattern, the Q tile,
 * the stages, then 128 bytes of mbarriers and the stages' key tiles. */
#define MASKATTN_HOPPER_FWD_THREADS 384
#define MASKATTN_HOPPER_FWD_BLOCK_M 128
#define MASKATTN_HOPPER_FWD_BLOCK_N 128
#define MASKATTN_HOPPER_FWD_STAGES 3
#define MASKATTN_HOPPER_FWD_SMEM_D64 (1024 + (128 + 3 * 2 * 128) * 1 * 128 + 128)
#define MASKATTN_HOPPER_FWD_SMEM_D96 (1024 + (128 + 3 * 2 * 128) * 2 * 128 + 128)
#define MASKATTN_HOPPER_FWD_SMEM_D128 (1024 + (128 + 3 * 2 * 128) * 2 * 128 + 128)

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
    /* XAttention block selection ANDed with the mask, or NULL: uint8
     * [batch][heads_q][ceil(len_q / 128)][select_k_blocks], nonzero = the 128 x 128
     * block is kept. Query tiles are 128 rows, one block row each. */
    const uint8_t *block_select;
    int32_t select_k_blocks;
} MaskattnFwdParams;

/* Side of the square blocks of a block selection. */
#define MASKATTN_SELECT_BLOCK 128

/* Temporal-Aware Dual RoPE (csrc/rope.cu), in place on one or two [B, L, H, D]
 * tensors (Q and K; x[1] NULL and heads[1] 0 for one) of the same B, L and D:
 * pair i of token l turns by positions[l] * base^(-2i/D). Element strides; the
 * last dimension is contiguous, the others multiples of 8 elements, bases 16-byte
 * aligned, D a multiple of 16 (16-byte vector accesses). Dynamic shared memory:
 * (D/2) * 8 + tokens_per_block * (D/2) * 8 bytes. */
typedef struct MaskattnRopeParams {
    void *x[2];
    int64_t batch_stride[2];
    int64_t row_stride[2];
    int64_t head_stride[2];
    const double *positions;    /* [len]: p_global + gamma * t, per token */
    double log2_base;           /* log2(base) */
    int32_t heads[2];
    int32_t batch;
    int32_t len;
    int32_t head_dim;
    int32_t interleaved;        /* 0: pairs (i, i + D/2); 1: pairs (2i, 2i + 1) */
    int32_t tokens_per_block;   /* tokens of one CTA, >= 1 */
} MaskattnRopeParams;

/* XAttention antidiagonal scoring (csrc/xattn.cu). A CTA of
 * MASKATTN_XATTN_SCORE_THREADS threads (4 warps of 16 rows) owns
 * MASKATTN_XATTN_SCORE_ROWS downsampled query rows of one (batch, head) and walks
 * their visible downsampled key columns in chunks of MASKATTN_XATTN_SCORE_COLS,
 * one antidiagonal offset t < S after the other (mma.sync, inner dimension D per
 * offset). Dynamic shared memory: two stages of a Q and a K tile, (ROWS + COLS)
 * rows of D + 8 two-byte elements each, then ROWS floats and ROWS ints. */
#define MASKATTN_XATTN_SCORE_THREADS 128
#define MASKATTN_XATTN_SCORE_ROWS 64
#define MASKATTN_XATTN_SCORE_COLS 64
#define MASKATTN_XATTN_SCORE_SMEM_D64 (2 * (64 + 64) * (64 + 8) * 2 + 64 * 8)
#define MASKATTN_XATTN_SCORE_SMEM_D96 (2 * (64 + 64) * (96 + 8) * 2 + 64 * 8)
#define MASKATTN_XATTN_SCORE_SMEM_D128 (2 * (64 + 64) * (128 + 8) * 2 + 64 * 8)
#define MASKATTN_XATTN_SCORE_SMEM_D256 (2 * (64 + 64) * (256 + 8) * 2 + 64 * 8)

/* XAttention block selection: one CTA of MASKATTN_XATTN_SELECT_THREADS threads per
 * (batch, head, query block) row. Dynamic shared memory: 9 bytes per entry of the
 * sort (sort_size, the power of two >= n_k_blocks): a u64 key and a u8 flag. */
#define MASKATTN_XATTN_SELECT_THREADS 256
#define MASKATTN_XATTN_SELECT_MAX_KEY_BLOCKS 8192

/* Antidiagonal block scores of XAttention (src/xattention/mod.rs, definitions 1-6),
 * Q [B, Lq, Hq, D] and K [B, Lk, Hkv, D] with element strides (last dim contiguous). */
typedef struct MaskattnXattnScoreParams {
    const void *q;
    const void *k;
    float *scores;  /* [batch, heads_q, n_q_blocks, n_k_blocks], every entry written */
    float *scratch; /* [launch's (batch, head) pairs][n_q_rows][n_k_blocks]: log2-sum-exp2
                       of each (downsampled row, key block) */
    int64_t q_batch_stride, q_row_stride, q_head_stride;
    int64_t k_batch_stride, k_row_stride, k_head_stride;
    int32_t batch;
    int32_t heads_q;
    int32_t heads_kv;
    int32_t len_q;
    int32_t len_k;
    int32_t head_dim;
    int32_t stride;     /* S, 8 or 16 (the kernel is compiled for one) */
    int32_t n_q_rows;   /* ceil(len_q / S) */
    int32_t n_k_cols;   /* ceil(len_k / S) */
    int32_t n_q_blocks; /* ceil(len_q / 128) */
    int32_t n_k_blocks; /* ceil(len_k / 128) */
    int32_t bh_begin;   /* first batch * heads_q + head of this launch (blockIdx.x adds) */
    int32_t causal;
    float scale_log2;   /* log2(e) / (S * sqrt(D)) */
} MaskattnXattnScoreParams;

/* XAttention block selection (src/xattention/mod.rs, definitions 6-7). */
typedef struct MaskattnXattnSelectParams {
    const float *scores; /* [batch, heads, n_q_blocks, n_k_blocks] */
    const double *tau;   /* [heads] */
    uint8_t *selected;   /* [batch, heads, n_q_blocks, n_k_blocks], every entry written */
    int32_t batch;
    int32_t heads;
    int32_t len_q;
    int32_t len_k;
    int32_t n_q_blocks;
    int32_t n_k_blocks;
    int32_t sort_size; /* power of two >= n_k_blocks; dynamic shared memory 9 * sort_size */
    int32_t causal;
} MaskattnXattnSelectParams;

/* Backward pass (csrc/flash_bwd.cu, FlashAttention-2's schedule transposed; its walk
 * is specified by src/tiles.rs and checked on the CPU backend, tests/cpu_backend.rs).
 *
 * Main kernel: one CTA of MASKATTN_BWD_THREADS threads (8 warps, 16 keys each) per
 * (batch, kv head, key tile of MASKATTN_BWD_BLOCK_N keys) holds the tile's dK and dV
 * in registers and walks, for every query head of the GQA group, the query tiles of
 * MASKATTN_BWD_BLOCK_M rows in the tile's walk. Dynamic shared memory: the K and V
 * tiles, two buffers of (Q, dO) tiles, the dS^T tile [BLOCK_N][BLOCK_M], two
 * buffers of per-row data (16 bytes of intervals, the base-2 LSE and D: 24 bytes a
 * row): (2 * BLOCK_N + 4 * BLOCK_M) * D * 2 + BLOCK_N * BLOCK_M * 2 + 2 * BLOCK_M * 24.
 * That needs 117,760 B at D = 96 and 150,528 B at D = 128: more than the 99 KB a block
 * may use on sm_86/89/120. Class 256 takes query tiles of MASKATTN_BWD_BLOCK_M_D256
 * rows (206,336 B: sm_90 only) and, like its dQ pass (197,888 B), splits the output
 * columns into four 64-column slices, one CTA each (gridDim.z = 4). */
#define MASKATTN_BWD_THREADS 256
#define MASKATTN_BWD_BLOCK_M 64
#define MASKATTN_BWD_BLOCK_M_D256 32
#define MASKATTN_BWD_BLOCK_N 128
#define MASKATTN_BWD_SLICE_COLS_D256 64
#define MASKATTN_BWD_SMEM_D64 ((2 * 128 + 4 * 64) * 64 * 2 + 128 * 64 * 2 + 2 * 64 * 24)
#define MASKATTN_BWD_SMEM_D96 ((2 * 128 + 4 * 64) * 96 * 2 + 128 * 64 * 2 + 2 * 64 * 24)
#define MASKATTN_BWD_SMEM_D128 ((2 * 128 + 4 * 64) * 128 * 2 + 128 * 64 * 2 + 2 * 64 * 24)
#define MASKATTN_BWD_SMEM_D256 ((2 * 128 + 4 * 32) * 256 * 2 + 128 * 32 * 2 + 2 * 32 * 24)

/* The compact main kernel for 99 KB (at D = 96 and 128; at D = 64 the kernel above fits
 * every budget): the same 8 warps and key tiles, one buffer of (Q, dO) and row data (a
 * step's loads are issued once every warp is done reading the previous step's), query
 * tiles of MASKATTN_BWD_COMPACT_BLOCK_M_D* rows: (2 * BLOCK_N + 2 * BM) * D * 2 +
 * BLOCK_N * BM * 2 + BM * 24. */
#define MASKATTN_BWD_COMPACT_BLOCK_M_D96 64
#define MASKATTN_BWD_COMPACT_BLOCK_M_D128 32
#define MASKATTN_BWD_COMPACT_SMEM_D96 ((2 * 128 + 2 * 64) * 96 * 2 + 128 * 64 * 2 + 64 * 24)
#define MASKATTN_BWD_COMPACT_SMEM_D128 ((2 * 128 + 2 * 32) * 128 * 2 + 128 * 32 * 2 + 32 * 24)

/* Deterministic dQ pass: one CTA of MASKATTN_BWD_DQ_THREADS threads (4 warps, 16
 * query rows each) per (batch, query head, query tile of MASKATTN_BWD_DQ_BLOCK_M
 * rows) walks key tiles of MASKATTN_BWD_DQ_BLOCK_N keys exactly as the forward does.
 * It has its own query-tile summaries (the main kernel's compact query tiles may be
 * smaller).
 * Dynamic shared memory: the Q and dO tiles, two buffers of (K, V) tiles, the rows'
 * intervals (16 bytes a row), then 256 bytes of per-CTA values. */
#define MASKATTN_BWD_DQ_THREADS 128
#define MASKATTN_BWD_DQ_BLOCK_M 64
#define MASKATTN_BWD_DQ_BLOCK_N 64
#define MASKATTN_BWD_DQ_SMEM_D64 ((2 * 64 + 4 * 64) * 64 * 2 + 64 * 16 + 256)
#define MASKATTN_BWD_DQ_SMEM_D96 ((2 * 64 + 4 * 64) * 96 * 2 + 64 * 16 + 256)
#define MASKATTN_BWD_DQ_SMEM_D128 ((2 * 64 + 4 * 64) * 128 * 2 + 64 * 16 + 256)
#define MASKATTN_BWD_DQ_SMEM_D256 ((2 * 64 + 4 * 64) * 256 * 2 + 64 * 16 + 256)

/* The element-wise kernels (preprocess: D and the base-2 LSE; dQ conversion): a CTA of
 * MASKATTN_BWD_ROW_THREADS threads, 16 threads (one 8-element chunk each) per row. */
#define MASKATTN_BWD_ROW_THREADS 256
#define MASKATTN_BWD_ROWS_PER_CTA 16

/* Backward attention: dQ, dK, dV from Q, K, V, the forward's O and LSE and dO.
 * Tensors [B, L, H, D] with element strides (the last dimension is contiguous). */
typedef struct MaskattnBwdParams {
    const void *q;
    const void *k;
    const void *v;
    const void *o;
    const void *d_out;
    void *dq;
    void *dk;
    void *dv;
    const float *lse;           /* [batch, heads_q, len_q], natural log, from the forward */
    float *lse2;                /* scratch [batch, heads_q, len_q_pad]: lse * log2(e), +inf where lse = -inf
                                   and on the padding rows */
    float *delta;               /* scratch [batch, heads_q, len_q_pad]: D = rowsum(dO * O), 0 on padding rows */
    float *dq_accum;            /* [batch, heads_q, len_q, dq_accum_cols] f32 (atomic mode), NULL in the
                                   deterministic mode */
    const int32_t *intervals;   /* [len_q][4]: s0, e0, s1, e1 */
    const MaskattnTileSummary *q_tile_summaries; /* per query tile of the main kernel */
    const MaskattnTileSummary *dq_tile_summaries; /* per query tile of the dQ pass */
    const int32_t *k_tile_order; /* key tiles in launch order, heaviest first */
    const int32_t *k_tile_walks; /* [n_k_tiles][2]: the query tiles [begin, end) a key tile walks */
    const int32_t *q_tile_order; /* query tiles in launch order for the dQ pass, heaviest first */
    int64_t q_batch_stride, q_row_stride, q_head_stride;
    int64_t k_batch_stride, k_row_stride, k_head_stride;
    int64_t v_batch_stride, v_row_stride, v_head_stride;
    int64_t o_batch_stride, o_row_stride, o_head_stride;
    int64_t do_batch_stride, do_row_stride, do_head_stride;
    int64_t dq_batch_stride, dq_row_stride, dq_head_stride;
    int64_t dk_batch_stride, dk_row_stride, dk_head_stride;
    int64_t dv_batch_stride, dv_row_stride, dv_head_stride;
    int32_t batch;
    int32_t heads_q;
    int32_t heads_kv;
    int32_t len_q;
    int32_t len_k;
    int32_t len_q_pad;          /* len_q rounded up to MASKATTN_BWD_DQ_BLOCK_M (a multiple of every main
                                   kernel's BLOCK_M): the row count of lse2 and delta */
    int32_t head_dim;
    int32_t dq_accum_cols;      /* the head-dim class (64, 96, 128 or 256): dq_accum's row length */
    float scale;                /* softmax scale of the forward */
    float scale_log2;           /* scale * log2(e) */
} MaskattnBwdParams;

#endif /* MASKATTN_PARAMS_H */
