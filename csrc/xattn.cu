// XAttention (seed 002) on the GPU: antidiagonal block scoring and block selection.
// The definitions, and the f64 reference both kernels are tested against, are in
// src/xattention/mod.rs (numbered definitions 1-7 below refer to its module docs).
//
// Scoring, one CTA per (batch x head, MASKATTN_XATTN_SCORE_ROWS = 64 downsampled
// query rows): the antidiagonal logit
//     A[i, j] = sum_{t<S} Q[i*S + S-1-t] . K[j*S + t] / (S * sqrt(D))
// is a sum over t of ordinary Q_t K_t^T products with inner dimension D, Q_t the
// query rows i*S + S-1-t and K_t the key rows j*S + t. Each warp owns 16 rows; the
// CTA walks the visible columns in chunks of 64, and for every chunk the S offsets
// t, each a (64 x D) Q_t tile and a (64 x D) K_t tile staged in shared memory by
// cp.async (double-buffered, zero-filled past Lq / Lk: the padding of definition 1)
// and multiplied with mma.sync m16n8k16 into f32 accumulators.
//
// The [L/S, L/S] logit matrix never reaches global memory, and the logits are
// computed once: at the end of a chunk each row's logits (base 2) are masked by
// the visibility rule (definition 3) and reduced, per key block of R = 128/S
// columns, to the block's log2-sum-exp2, written to a scratch array
// [row][key block] (4 bytes per R*S*D multiply-adds), while each row's
// log2-sum-exp2 over all its columns is kept online in registers. After the last
// chunk the CTA knows every row's normaliser and turns its scratch into block
// scores (definitions 4-5):
//     score[qb, kb] = sum_{rows i of qb} exp2(lse2(i, kb) - lse2(i)),
// every (qb, kb) of its query blocks written (0 for invisible blocks). The scratch
// is R times the size of the scores; the Rust side bounds it by launching a
// limited number of (batch, head) pairs at a time.
//
// Selection, one CTA per (batch, head, query block) row: scores of the visible key
// blocks become u64 keys (float bits << 32 | ~index: descending key = descending
// score, ties to the lower index; scores are non-negative so their bits order as
// the floats do), bitonic-sorted in shared memory; one thread then runs the
// reference's loop in f64 (mass summed in ascending block order, forced blocks
// first, then by descending score while kept < tau * mass), so on the same f32
// scores the selection is bit-for-bit the reference's.
#include "params.h"
#include "prims.cuh"

namespace maskattn {
namespace xattn {

constexpr int kBlock = 128;  // selection block, tokens
constexpr int kScoreThreads = MASKATTN_XATTN_SCORE_THREADS;
constexpr int kRows = MASKATTN_XATTN_SCORE_ROWS;  // downsampled query rows per CTA
constexpr int kCols = MASKATTN_XATTN_SCORE_COLS;  // downsampled key columns per chunk
static_assert(kRows == 16 * (kScoreThreads / 32), "one 16-row mma tile per warp");
static_assert(kCols % 16 == 0, "n-fragments are loaded in pairs");

template <int D>
struct ScoreSmem {
    static constexpr int kPitch = D + 8;  // elements; 16 bytes of padding: conflict-free ldmatrix
    static constexpr int kTileRows = kRows + kCols;
    static constexpr int kStageBytes = kTileRows * kPitch * 2;
    static constexpr int kBytes = 2 * kStageBytes + kRows * 8;
};
static_assert(ScoreSmem<64>::kBytes == MASKATTN_XATTN_SCORE_SMEM_D64, "params.h's shared memory for D = 64");
static_assert(ScoreSmem<96>::kBytes == MASKATTN_XATTN_SCORE_SMEM_D96, "params.h's shared memory for D = 96");
static_assert(ScoreSmem<128>::kBytes == MASKATTN_XATTN_SCORE_SMEM_D128, "params.h's shared memory for D = 128");
static_assert(ScoreSmem<256>::kBytes == MASKATTN_XATTN_SCORE_SMEM_D256, "params.h's shared memory for D = 256");

// Last visible downsampled column of downsampled row i (definition 3), -1 when the
// row sees nothing or does not exist (i >= n_q_rows). Non-decreasing in i.
template <int S>
__device__ __forceinline__ int32_t last_visible_col(const MaskattnXattnScoreParams &p, int32_t i) {
    if (i >= p.n_q_rows) return -1;
    if (!p.causal) return p.n_k_cols - 1;
    const int64_t q_hi = min(int64_t(i) * S + (S - 1), int64_t(p.len_q) - 1);
    const int64_t key = q_hi + p.len_k - p.len_q;
    if (key < 0) return -1;
    return int32_t(min(key / S, int64_t(p.n_k_cols) - 1));
}

template <typename Elem, int D, int S>
__device__ __forceinline__ void block_scores_cta(const MaskattnXattnScoreParams &p) {
    constexpr int R = kBlock / S;              // downsampled rows / columns per 128-token block
    constexpr int kChunks16 = D / 8;           // 16-byte pieces of a row
    constexpr int NF = kCols / 8;              // n-fragments per warp and chunk
    constexpr int kFragsPerBlock = R / 8;      // n-fragments per key block
    constexpr int kBlocksPerChunk = kCols / R; // key blocks per chunk
    using Smem = ScoreSmem<D>;
    constexpr int kPitch = Smem::kPitch;
    static_assert(S == 8 || S == 16, "stride 8 or 16");
    static_assert(D % 16 == 0 && kCols % R == 0 && kRows % R == 0, "blocks tile the CTA");

    unsigned char *const xattn_smem = maskattn::dynamic_smem();
    float *row_lse = reinterpret_cast<float *>(xattn_smem + 2 * Smem::kStageBytes);  // [kRows], base 2
    int32_t *row_last = reinterpret_cast<int32_t *>(row_lse + kRows);               // [kRows]

    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int32_t bh = p.bh_begin + int32_t(blockIdx.x);
    const int32_t b = bh / p.heads_q, h = bh % p.heads_q;
    const int32_t h_kv = h / (p.heads_q / p.heads_kv);
    // Row blocks in reverse: under causality the last rows see the most columns,
    // so the heaviest CTAs start first.
    const int32_t i0 = int32_t(gridDim.y - 1 - blockIdx.y) * kRows;
    const int32_t rows = min(kRows, p.n_q_rows - i0);
    const int32_t cta_last = last_visible_col<S>(p, i0 + rows - 1);
    const int32_t n_chunks = cta_last < 0 ? 0 : cta_last / kCols + 1;

    const Elem *q = static_cast<const Elem *>(p.q) + b * p.q_batch_stride + h * p.q_head_stride;
    const Elem *k = static_cast<const Elem *>(p.k) + b * p.k_batch_stride + h_kv * p.k_head_stride;
    float *scratch = p.scratch + (int64_t(blockIdx.x) * p.n_q_rows + i0) * p.n_k_blocks;

    if (tid < kRows) row_last[tid] = last_visible_col<S>(p, i0 + tid);

    // This thread's two rows of its warp's 16 (mma accumulator rows lane/4, +8).
    const int r_lo = warp * 16 + lane / 4;
    const int32_t last[2] = {last_visible_col<S>(p, i0 + r_lo), last_visible_col<S>(p, i0 + r_lo + 8)};
    float run_max[2] = {-INFINITY, -INFINITY}, run_sum[2] = {0.f, 0.f};  // base 2, online
    float acc[NF][4];
#pragma unroll
    for (int nf = 0; nf < NF; ++nf)
#pragma unroll
        for (int x = 0; x < 4; ++x) acc[nf][x] = 0.f;

    const uint32_t s_base = fwd::smem_u32(xattn_smem);
    // Stage `step % 2` <- Q_t rows of the CTA and K_t rows of chunk c (step = c*S + t).
    // A warp copies 8 rows x 4 pieces (16 bytes each) per instruction, lane l taking
    // row l % 8 and piece l / 8 (then + 4, + 8, ...): each 8-lane phase writes one
    // piece of 8 consecutive rows, on 8 distinct bank groups since a row's pitch is an
    // odd number of 16-byte groups. (Four lanes per row with contiguous pieces put
    // pieces 0 and 8 of a row on the same banks: 2-way conflicts at D = 96 and 128,
    // which the CPU backend's counters showed.) A pass covers 32 rows: passes 0-1
    // the Q tile, 2-3 the K tile.
    constexpr int kPieces = kChunks16 / 4;
    static_assert(kChunks16 % 4 == 0 && kScoreThreads == 128 && kRows == 64 && kCols == 64, "loader mapping");
    static_assert((kPitch / 8) % 2 == 1, "an odd pitch in 16-byte groups spreads 8 rows over all banks");
    const int ld_row = warp * 8 + lane % 8, ld_piece = lane / 8;
    auto load_step = [&](int32_t step) {
        const int32_t c = step / S, t = step % S;
        const uint32_t stage = s_base + (step % 2) * Smem::kStageBytes + (ld_row * kPitch + ld_piece * 8) * 2;
#pragma unroll
        for (int pass = 0; pass < 4; ++pass) {
            const int row = pass * 32 + ld_row;
            const Elem *src;
            bool valid;
            if (pass < 2) {
                const int64_t token = int64_t(i0 + row) * S + (S - 1 - t);
                valid = token < p.len_q;
                src = q + (valid ? token * p.q_row_stride : 0) + ld_piece * 8;
            } else {
                const int64_t token = (int64_t(c) * kCols + (row - kRows)) * S + t;
                valid = token < p.len_k;
                src = k + (valid ? token * p.k_row_stride : 0) + ld_piece * 8;
            }
#pragma unroll
            for (int x = 0; x < kPieces; ++x)
                fwd::cp_async_16(stage + (pass * 32 * kPitch + x * 32) * 2, src + x * 32, valid);
        }
    };

    if (n_chunks > 0) load_step(0);
    fwd::cp_async_commit();
    for (int32_t c = 0; c < n_chunks; ++c) {
#pragma unroll 1
        for (int t = 0; t < S; ++t) {
            const int32_t step = c * S + t;
            if (step + 1 < n_chunks * S) load_step(step + 1);
            fwd::cp_async_commit();  // possibly empty: keeps the group count uniform
            fwd::cp_async_wait<1>(); // this step's tiles have landed (for this thread)
            __syncthreads();          // ... and for every thread
            const uint32_t sQ = s_base + (step % 2) * Smem::kStageBytes;
            const uint32_t sK = sQ + kRows * kPitch * 2;
#pragma unroll
            for (int kk = 0; kk < D / 16; ++kk) {
                uint32_t a[4];
                fwd::ldmatrix_x4(a, sQ + ((warp * 16 + lane % 16) * kPitch + kk * 16 + (lane / 16) * 8) * 2);
#pragma unroll
                for (int nf = 0; nf < NF; nf += 2) {
                    uint32_t bf[4];  // b0, b1 of fragment nf, then of nf + 1
                    fwd::ldmatrix_x4(bf, sK + ((nf * 8 + (lane / 16) * 8 + lane % 8) * kPitch + kk * 16 + ((lane / 8) % 2) * 8) * 2);
                    fwd::mma_16816<Elem>(acc[nf], a, bf[0], bf[1]);
                    fwd::mma_16816<Elem>(acc[nf + 1], a, bf[2], bf[3]);
                }
            }
            __syncthreads();  // every warp is done with this stage before step + 2 refills it
        }

        // Chunk c complete: logits of columns [c*kCols, (c+1)*kCols) in acc.
        const int32_t col0 = c * kCols + 2 * (lane % 4);
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const int r = r_lo + 8 * half;
            float v[NF][2];
            float m = -INFINITY;
#pragma unroll
            for (int nf = 0; nf < NF; ++nf)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const int32_t j = col0 + nf * 8 + e;
                    v[nf][e] = j <= last[half] ? acc[nf][2 * half + e] * p.scale_log2 : -INFINITY;
                    m = fmaxf(m, v[nf][e]);
                }
            m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 1));
            m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 2));
            const float shift = m == -INFINITY ? 0.f : m;  // no (-inf) - (-inf)
            float chunk_sum = 0.f;
#pragma unroll
            for (int kbl = 0; kbl < kBlocksPerChunk; ++kbl) {
                float s = 0.f;
#pragma unroll
                for (int f = 0; f < kFragsPerBlock; ++f) {
                    const int nf = kbl * kFragsPerBlock + f;
                    s += exp2f(v[nf][0] - shift) + exp2f(v[nf][1] - shift);
                }
                s += __shfl_xor_sync(0xffffffffu, s, 1);
                s += __shfl_xor_sync(0xffffffffu, s, 2);
                chunk_sum += s;
                const int32_t kb = c * kBlocksPerChunk + kbl;
                if (lane % 4 == kbl % 4 && kb < p.n_k_blocks && i0 + r < p.n_q_rows)
                    scratch[int64_t(r) * p.n_k_blocks + kb] = shift + log2f(s);  // -inf if nothing visible
            }
            if (m != -INFINITY) {
                const float new_max = fmaxf(run_max[half], m);
                run_sum[half] = run_sum[half] * exp2f(run_max[half] - new_max) + chunk_sum * exp2f(m - new_max);
                run_max[half] = new_max;
            }
        }
#pragma unroll
        for (int nf = 0; nf < NF; ++nf)
#pragma unroll
            for (int x = 0; x < 4; ++x) acc[nf][x] = 0.f;
    }

    // Row normalisers (the quad's four lanes hold the same values).
    if (lane % 4 == 0) {
#pragma unroll
        for (int half = 0; half < 2; ++half)
            row_lse[r_lo + 8 * half] = run_max[half] == -INFINITY ? -INFINITY : run_max[half] + log2f(run_sum[half]);
    }
    __syncthreads();  // row_lse, row_last and every thread's scratch writes are visible to the CTA

    // Block scores of the CTA's query blocks, every key block (0 where invisible).
    const int32_t qb0 = i0 / R;
    const int32_t n_qb = min(kRows / R, p.n_q_blocks - qb0);
    const int32_t nkb = p.n_k_blocks;
    float *out = p.scores + (int64_t(bh) * p.n_q_blocks + qb0) * nkb;
    for (int32_t x = tid; x < n_qb * nkb; x += kScoreThreads) {
        const int32_t qbl = x / nkb, kb = x % nkb;
        float sum = 0.f;
#pragma unroll
        for (int rr = 0; rr < R; ++rr) {
            const int r = qbl * R + rr;
            // row_last < 0 for rows that see nothing or do not exist; a visible
            // column in key block kb means its chunk was processed and written.
            if (kb * R <= row_last[r]) sum += exp2f(scratch[int64_t(r) * nkb + kb] - row_lse[r]);
        }
        out[int64_t(qbl) * nkb + kb] = sum;
    }
}

// Number of visible key blocks (a prefix) of query block qb (definition 6).
__device__ __forceinline__ int32_t visible_key_blocks(const MaskattnXattnSelectParams &p, int32_t qb) {
    if (!p.causal) return p.n_k_blocks;
    const int64_t q_last = min(int64_t(qb + 1) * kBlock, int64_t(p.len_q)) - 1;
    const int64_t last_key = q_last + p.len_k - p.len_q;
    if (last_key < 0) return 0;
    return int32_t(min(last_key / kBlock + 1, int64_t(p.n_k_blocks)));
}

// Scores the reference rejects (negative, NaN) count as 0 here; +inf stays.
__device__ __forceinline__ float clean_score(float s) { return fmaxf(s, 0.f) + 0.f; }

__device__ __forceinline__ void select_row(const MaskattnXattnSelectParams &p) {
    constexpr int T = MASKATTN_XATTN_SELECT_THREADS;
    unsigned char *const xattn_smem = maskattn::dynamic_smem();
    uint64_t *keys = reinterpret_cast<uint64_t *>(xattn_smem);  // [sort_size]
    uint8_t *flags = xattn_smem + 8 * int64_t(p.sort_size);     // [sort_size]

    const int tid = threadIdx.x;
    const int64_t row = blockIdx.x;  // (b * heads + h) * n_q_blocks + qb
    const int32_t qb = int32_t(row % p.n_q_blocks);
    const int32_t h = int32_t((row / p.n_q_blocks) % p.heads);
    const int32_t nkb = p.n_k_blocks;
    const float *scores = p.scores + row * nkb;
    uint8_t *out = p.selected + row * nkb;

    const int32_t v = visible_key_blocks(p, qb);
    if (v == 0) {  // uniform over the CTA
        for (int32_t kb = tid; kb < nkb; kb += T) out[kb] = 0;
        return;
    }
    const int32_t diag = p.causal ? v - 1 : 0;  // forced with block 0
    int32_t n = 1;
    while (n < v) n <<= 1;

    // Keys of the candidates (visible, not forced); 0 sorts last and marks the end.
    for (int32_t i = tid; i < n; i += T) {
        uint64_t key = 0;
        if (i < v && i != 0 && i != diag)
            key = (uint64_t(__float_as_uint(clean_score(scores[i]))) << 32) | uint64_t(0xffffffffu - uint32_t(i));
        keys[i] = key;
    }
    for (int32_t i = tid; i < nkb; i += T) flags[i] = 0;
    __syncthreads();

    // Bitonic sort, descending.
    for (int32_t size = 2; size <= n; size <<= 1) {
        for (int32_t half = size / 2; half > 0; half >>= 1) {
            for (int32_t i = tid; i < n / 2; i += T) {
                const int32_t lo = 2 * i - (i & (half - 1)), hi = lo + half;
                const bool descending = (lo & size) == 0;
                const uint64_t a = keys[lo], c = keys[hi];
                if ((a < c) == descending) {
                    keys[lo] = c;
                    keys[hi] = a;
                }
            }
            __syncthreads();
        }
    }

    if (tid == 0) {
        // The reference's loop, in its order and in f64: the same f32 scores give
        // the same selection, bit for bit.
        double mass = 0.0;
        for (int32_t kb = 0; kb < v; ++kb) mass += double(clean_score(scores[kb]));
        const double required = p.tau[h] * mass;
        flags[0] = 1;
        double kept = double(clean_score(scores[0]));
        if (diag != 0) {
            flags[diag] = 1;
            kept += double(clean_score(scores[diag]));
        }
        for (int32_t i = 0; i < n; ++i) {
            const uint64_t key = keys[i];
            if (key == 0 || kept >= required) break;
            flags[0xffffffffu - uint32_t(key)] = 1;
            kept += double(__uint_as_float(uint32_t(key >> 32)));
        }
    }
    __syncthreads();
    for (int32_t kb = tid; kb < nkb; kb += T) out[kb] = flags[kb];
}

}  // namespace xattn
}  // namespace maskattn

#define MASKATTN_XATTN_SCORE_KERNEL(DTYPE, ELEM, D, S)                                                          \
    extern "C" __global__ void __launch_bounds__(MASKATTN_XATTN_SCORE_THREADS)                                 \
        maskattn_xattn_scores_##DTYPE##_d##D##_s##S(const MaskattnXattnScoreParams p) {                        \
        maskattn::xattn::block_scores_cta<ELEM, D, S>(p);                                                       \
    }                                                                                                          \
    MASKATTN_REGISTER_KERNEL(maskattn_xattn_scores_##DTYPE##_d##D##_s##S)
MASKATTN_XATTN_SCORE_KERNEL(bf16, __nv_bfloat16, 64, 8)
MASKATTN_XATTN_SCORE_KERNEL(bf16, __nv_bfloat16, 64, 16)
MASKATTN_XATTN_SCORE_KERNEL(bf16, __nv_bfloat16, 96, 8)
MASKATTN_XATTN_SCORE_KERNEL(bf16, __nv_bfloat16, 96, 16)
MASKATTN_XATTN_SCORE_KERNEL(bf16, __nv_bfloat16, 128, 8)
MASKATTN_XATTN_SCORE_KERNEL(bf16, __nv_bfloat16, 128, 16)
MASKATTN_XATTN_SCORE_KERNEL(bf16, __nv_bfloat16, 256, 8)
MASKATTN_XATTN_SCORE_KERNEL(bf16, __nv_bfloat16, 256, 16)
MASKATTN_XATTN_SCORE_KERNEL(f16, __half, 64, 8)
MASKATTN_XATTN_SCORE_KERNEL(f16, __half, 64, 16)
MASKATTN_XATTN_SCORE_KERNEL(f16, __half, 96, 8)
MASKATTN_XATTN_SCORE_KERNEL(f16, __half, 96, 16)
MASKATTN_XATTN_SCORE_KERNEL(f16, __half, 128, 8)
MASKATTN_XATTN_SCORE_KERNEL(f16, __half, 128, 16)
MASKATTN_XATTN_SCORE_KERNEL(f16, __half, 256, 8)
MASKATTN_XATTN_SCORE_KERNEL(f16, __half, 256, 16)
#undef MASKATTN_XATTN_SCORE_KERNEL

extern "C" __global__ void __launch_bounds__(MASKATTN_XATTN_SELECT_THREADS)
    maskattn_xattn_select(const MaskattnXattnSelectParams p) {
    maskattn::xattn::select_row(p);
}
MASKATTN_REGISTER_KERNEL(maskattn_xattn_select)
