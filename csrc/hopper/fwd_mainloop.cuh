// The main loop of the Hopper forward kernel: the producer warp that walks a query
// tile's key tiles and loads them through TMA, and the consumer warpgroups that
// multiply them with wgmma, handed over through a ring of shared-memory stages.
//
// Per stage s, three mbarriers: full_k[s] and full_v[s] complete when the stage's K
// or V tile has landed (the producer's expect_tx and the copies' bytes), so that
// S = Q K^T starts before V is in; empty[s] when every consumer warp has retired its
// wgmmas on the stage (8 arrivals). The producer writes the stage's walk entry
// (key tile, class) before its arrive on full_k[s], so the consumers follow the walk
// the producer made, without classifying again; a walk ends with an entry of key
// tile -1, which carries no copies. Q has its own pair, q_full and q_empty.
//
// A consumer issues the next tile's S = Q K^T and this tile's O += P V together,
// waits for S only, masks it and folds it into the softmax, meant to run while P V
// does, then waits for P V and rescales O.
#pragma once

#include "block_summary.cuh"
#include "fwd/mask.cuh"
#include "fwd/softmax.cuh"
#include "hopper/fwd_traits.cuh"
#include "hopper/tile_scheduler.cuh"
#include "prims.cuh"

namespace maskattn {
namespace hopper_fwd {

using sm90::mbarrier_arrive;
using sm90::mbarrier_arrive_expect_tx;
using sm90::mbarrier_wait;
using sm90::TensorMap;

// Absolute shared addresses of the tiles and barriers, from the dynamic buffer
// rounded up to the 128-byte swizzle's 1,024-byte pattern.
template <class T>
struct Smem {
    uint32_t base;
    unsigned char *generic;  // `base` as a pointer, for the walk entries

    __device__ __forceinline__ Smem() {
        unsigned char *const buf = dynamic_smem();
        const uint32_t at = sm90::smem_u32(buf);
        base = (at + 1023) & ~1023u;
        generic = buf + (base - at);
    }

    __device__ __forceinline__ uint32_t q(int chunk) const { return base + chunk * T::kBlockM * T::kRowBytes; }
    __device__ __forceinline__ uint32_t k(int stage, int chunk) const {
        return base + T::kQBytes + stage * T::kStageBytes + chunk * T::kBlockN * T::kRowBytes;
    }
    __device__ __forceinline__ uint32_t v(int stage, int chunk) const { return k(stage, chunk) + T::kKVBytes; }

    __device__ __forceinline__ uint32_t q_full() const { return base + T::kTileBytes; }
    __device__ __forceinline__ uint32_t q_empty() const { return q_full() + 8; }
    __device__ __forceinline__ uint32_t full_k(int stage) const { return q_full() + 16 + 24 * stage; }
    __device__ __forceinline__ uint32_t full_v(int stage) const { return full_k(stage) + 8; }
    __device__ __forceinline__ uint32_t empty(int stage) const { return full_k(stage) + 16; }
    // (key tile, class) of the stage's tile.
    __device__ __forceinline__ int2 *walk(int stage) const {
        return reinterpret_cast<int2 *>(generic + T::kTileBytes + T::kBarrierBytes) + stage;
    }

    // Once, by one thread, before the __syncthreads that publishes them.
    __device__ __forceinline__ void init_barriers(int consumer_warps) const {
        sm90::mbarrier_init(q_full(), 1);
        sm90::mbarrier_init(q_empty(), consumer_warps);
        for (int s = 0; s < T::kStages; ++s) {
            sm90::mbarrier_init(full_k(s), 1);
            sm90::mbarrier_init(full_v(s), 1);
            sm90::mbarrier_init(empty(s), consumer_warps);
        }
        sm90::fence_mbarrier_init();
    }
};

// Position in the stage ring: both sides count every stage they pass (walk ends
// included) over all of the CTA's work tiles, so they agree on stage and phase.
template <int Stages>
struct Ring {
    int32_t used = 0;
    __device__ __forceinline__ int stage() const { return used % Stages; }
    __device__ __forceinline__ uint32_t phase() const { return uint32_t(used / Stages) & 1; }
};

// A wait of the producer warp's lanes, which leave it together: a lane that lagged
// behind while lane 0 went on through two more phases of the barrier would wait
// for a parity that has come round again, forever. (The CPU backend caught that
// with a 2-stage ring; with 3 its schedules no longer reach it, so no mutant keeps
// this __syncwarp, but the hazard is the ISA's, not the ring depth's.)
__device__ __forceinline__ void producer_wait(uint32_t bar, uint32_t parity) {
    mbarrier_wait(bar, parity);
    __syncwarp();
}

// The producer: every lane of warp 0 calls it for each work tile (the summary is a
// warp reduction) and waits; lane 0 writes the walk and issues the copies. `n` counts the CTA's
// work tiles (the phase of q_full and q_empty).
template <class T>
__device__ __forceinline__ void produce(const Smem<T> &sm, const MaskattnFwdParams &p, const TensorMap *q_map,
                                        const TensorMap *k_map, const TensorMap *v_map, const WorkTile &wt, int32_t n,
                                        Ring<T::kStages> &ring, int lane) {
    constexpr int BM = T::kBlockM, BN = T::kBlockN;
    const int32_t rows = min(BM, p.len_q - wt.m0);
    const MaskattnTileSummary summary = warp_summary(p.intervals, wt.m0, wt.m0 + rows, lane);
    const uint8_t *const selected =
        p.block_select == nullptr
            ? nullptr
            : p.block_select + ((int64_t(wt.batch) * p.heads_q + wt.head) * div_ceil(p.len_q, BM) + wt.m0 / BM) *
                                   p.select_k_blocks;
    const int32_t head_kv = wt.head / (p.heads_q / p.heads_kv);

    // The consumers of the previous work tile have retired their reads of Q.
    producer_wait(sm.q_empty(), (n & 1) ^ 1);
    if (lane == 0) {
        mbarrier_arrive_expect_tx(sm.q_full(), T::kQBytes);
        for (int c = 0; c < T::kChunks; ++c) {
            const int32_t at[4] = {64 * c, wt.m0, wt.head, wt.batch};
            sm90::tma_load<4>(sm.q(c), q_map, sm.q_full(), at);
        }
    }

    int32_t kt, end, cls = MASKATTN_TILE_EMPTY;
    key_tile_range(summary, BN, &kt, &end);
    for (kt = next_key_tile(summary, selected, kt, end, BN, cls); kt < end;
         kt = next_key_tile(summary, selected, kt + 1, end, BN, cls)) {
        const int s = ring.stage();
        // Round r of a stage waits for the consumers' release of round r - 1; the
        // first round's wait (parity 1 of a fresh barrier) passes at once.
        producer_wait(sm.empty(s), ring.phase() ^ 1);
        if (lane == 0) {
            trace_key_tile(cls);
            *sm.walk(s) = make_int2(kt, cls);
            mbarrier_arrive_expect_tx(sm.full_k(s), T::kKVBytes);
            for (int c = 0; c < T::kChunks; ++c) {
                const int32_t at[4] = {64 * c, kt * BN, head_kv, wt.batch};
                sm90::tma_load<4>(sm.k(s, c), k_map, sm.full_k(s), at);
            }
            mbarrier_arrive_expect_tx(sm.full_v(s), T::kKVBytes);
            for (int c = 0; c < T::kChunks; ++c) {
                const int32_t at[4] = {64 * c, kt * BN, head_kv, wt.batch};
                sm90::tma_load<4>(sm.v(s, c), v_map, sm.full_v(s), at);
            }
        }
        ++ring.used;
    }
    // The walk's end: a stage with no copies, whose full_v completes too so that its
    // phases keep counting the ring's rounds.
    const int s = ring.stage();
    producer_wait(sm.empty(s), ring.phase() ^ 1);
    if (lane == 0) {
        *sm.walk(s) = make_int2(-1, MASKATTN_TILE_EMPTY);
        mbarrier_arrive(sm.full_k(s));
        mbarrier_arrive(sm.full_v(s));
    }
    ++ring.used;
    __syncwarp();
}

// What a consumer warpgroup has at the end of a work tile: O (unnormalised) and the
// softmax state of its 64 rows, in the wgmma accumulator layout.
template <class T>
struct ConsumerState {
    float o[1][T::kHeadDim / 8][4];
    fwd::OnlineSoftmax<1> softmax;
};

// The first of the two rows (g and g + 8 of the accumulator layout) that thread `t`
// (0..127) of consumer warpgroup `group` holds: warp w of it has rows 16 w .. 16 w + 15
// of the group's 64.
template <class T>
__device__ __forceinline__ int32_t consumer_row(const WorkTile &wt, int group, int t) {
    return wt.m0 + T::kConsumerRows * group + 16 * (t / 32) + t % 32 / 4;
}

template <int N>
__device__ __forceinline__ float (&flat(float (&x)[1][N / 8][4]))[N / 2] {
    return reinterpret_cast<float(&)[N / 2]>(x);
}

// One consumer warpgroup (`group` 0 or 1: rows 64 group .. 64 group + 63 of the
// query tile) on one work tile; `t` is its thread (0..127).
template <class T>
__device__ __forceinline__ void consume(const Smem<T> &sm, const MaskattnFwdParams &p, const WorkTile &wt, int32_t n,
                                        Ring<T::kStages> &ring, int group, int t, ConsumerState<T> &st) {
    using Elem = typename T::Elem;
    constexpr int D = T::kHeadDim, BN = T::kBlockN, NF = BN / 8;
    const int lane = t % 32;
    const int32_t row0 = consumer_row<T>(wt, group, t);  // and row0 + 8
    int32_t iv[2][4];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int32_t r = row0 + 8 * h;
        const int4 x = r < p.len_q ? __ldg(reinterpret_cast<const int4 *>(p.intervals) + r) : make_int4(0, 0, 0, 0);
        iv[h][0] = x.x, iv[h][1] = x.y, iv[h][2] = x.z, iv[h][3] = x.w;
    }
#pragma unroll
    for (int df = 0; df < D / 8; ++df)
#pragma unroll
        for (int e = 0; e < 4; ++e) st.o[0][df][e] = 0.f;
    st.softmax = fwd::OnlineSoftmax<1>();

    float s[1][NF][4];
    uint32_t pv_a[T::kPVSteps][4];
    const uint32_t q_rows = sm.q(0) + T::kConsumerRows * group * T::kRowBytes;
    // S = Q K^T of stage `k_stage` into s, one commit group.
    auto issue_qk = [&](int k_stage) {
#pragma unroll
        for (int kk = 0; kk < T::kQKSteps; ++kk) {
            const uint32_t chunk = kk / 4, slice = 32 * (kk % 4);
            sm90::wgmma_ss<Elem, BN, 0, 0>(flat<BN>(s), k_major_desc(q_rows + chunk * T::kBlockM * T::kRowBytes + slice),
                                           k_major_desc(sm.k(k_stage, chunk) + slice), kk > 0);
        }
        sm90::wgmma_commit();
    };
    // O += P V of stage `v_stage`, P from registers: one commit group.
    auto issue_pv = [&](int v_stage) {
#pragma unroll
        for (int j = 0; j < T::kPVSteps; ++j)
            sm90::wgmma_rs<Elem, D, 1>(flat<D>(st.o), pv_a[j],
                                       n_major_desc(sm.v(v_stage, 0) + 16 * j * T::kRowBytes, T::kBlockN * T::kRowBytes),
                                       1);
        sm90::wgmma_commit();
    };
    auto mask = [&](int32_t kt) {
#pragma unroll
        for (int h = 0; h < 2; ++h) fwd::mask_row(s, 0, h, iv[h], kt * BN, lane);
    };
    // The probabilities as wgmma's A fragments: the accumulator's two n8 blocks of a
    // k16 slice are the A layout's two column halves.
    auto to_a = [&]() {
#pragma unroll
        for (int j = 0; j < T::kPVSteps; ++j)
#pragma unroll
            for (int r = 0; r < 4; ++r) {
                const float(&x)[4] = s[0][2 * j + r / 2];
                pv_a[j][r] = fwd::pack2<Elem>(x[2 * (r % 2)], x[2 * (r % 2) + 1]);
            }
    };
    // One arrival per warp, once every lane's reads of the stage (its walk entry
    // included) are done.
    auto release = [&](uint32_t bar) {
        __syncwarp();
        if (lane == 0) mbarrier_arrive(bar);
    };

    // wgmma.fence, after every write of the registers the next wgmmas use (S, O, P):
    // the fences pin those writes before it, as the ISA requires.
    auto fence_operands = [&]() {
        sm90::fence_registers(flat<BN>(s));
        sm90::fence_registers(flat<D>(st.o));
#pragma unroll
        for (int j = 0; j < T::kPVSteps; ++j) sm90::fence_registers(pv_a[j]);
        sm90::wgmma_fence();
    };
    // The next stage's walk entry, once its K has landed.
    auto fetch = [&](int &stage, uint32_t &phase) {
        stage = ring.stage();
        phase = ring.phase();
        ++ring.used;
        mbarrier_wait(sm.full_k(stage), phase);
        return *sm.walk(stage);
    };

    mbarrier_wait(sm.q_full(), n & 1);
    int cur, next;
    uint32_t cur_phase, next_phase;
    const int2 first = fetch(cur, cur_phase);
    if (first.x < 0) {
        release(sm.empty(cur));
    } else {
        fence_operands();
        issue_qk(cur);
        sm90::wgmma_wait<0>();
        sm90::fence_registers(flat<BN>(s));
        if (first.y == MASKATTN_TILE_PARTIAL) mask(first.x);
        float alpha[1][2];
        st.softmax.fold(s, alpha, p.scale_log2);  // O is still 0: nothing to rescale
        to_a();
        // Every iteration issues both GEMMs, unconditionally, so that ptxas can track
        // which accumulators are in flight (a wgmma issued under a branch serializes
        // the pipeline); the last tile's P V follows the loop.
        for (int2 entry = fetch(next, next_phase); entry.x >= 0; entry = fetch(next, next_phase)) {
            // V before issuing anything: a wait between the two GEMMs is a branch
            // inside the pipeline stage, which serializes it.
            mbarrier_wait(sm.full_v(cur), cur_phase);
            fence_operands();
            issue_qk(next);
            issue_pv(cur);
            sm90::wgmma_wait<1>();  // S of the next tile; P V may still run
            sm90::fence_registers(flat<BN>(s));
            if (entry.y == MASKATTN_TILE_PARTIAL) mask(entry.x);
            const bool grew = st.softmax.fold(s, alpha, p.scale_log2);
            // Keeps the softmax before the wait in the PTX; ptxas may still schedule
            // its EX2s after it, and does (bench/NOTES.md), losing the overlap.
            sm90::fence_registers(flat<BN>(s));
            sm90::wgmma_wait<0>();
            sm90::fence_registers(flat<D>(st.o));
            release(sm.empty(cur));
            fwd::OnlineSoftmax<1>::rescale(st.o, alpha, grew);
            to_a();
            cur = next;
            cur_phase = next_phase;
        }
        mbarrier_wait(sm.full_v(cur), cur_phase);
        fence_operands();
        issue_pv(cur);
        sm90::wgmma_wait<0>();
        sm90::fence_registers(flat<D>(st.o));
        release(sm.empty(cur));
        release(sm.empty(next));  // the walk's end
    }
    // Every wgmma reading Q has retired.
    release(sm.q_empty());
}

}  // namespace hopper_fwd
}  // namespace maskattn
