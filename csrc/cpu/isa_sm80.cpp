// The sm_80 instructions on the CPU backend, as the PTX ISA defines them: cp.async
// with its commit/wait groups (a copy lands at its wait, or earlier with early landing,
// and its destination reads as poison until then), mma.sync m16n8k16, ldmatrix x4,
// shuffles and votes, and the shared-memory bank model behind the conflict counters.
#include "cpu/internal.h"

namespace maskattn {
namespace cpu {

// Extra wavefronts of one phase of 16-byte accesses: rows at distinct addresses
// that fall on the same four banks are served one after the other.
uint64_t phase_conflicts(const uint32_t *addr, int n) {
    int per_group[8] = {};
    int worst = 0;
    for (int i = 0; i < n; ++i) {
        bool repeat = false;
        for (int j = 0; j < i; ++j) repeat |= addr[j] / 16 == addr[i] / 16;
        if (repeat) continue;
        const int g = int(addr[i] / 16 % 8);
        worst = std::max(worst, ++per_group[g]);
    }
    return worst > 0 ? uint64_t(worst - 1) : 0;
}

// ---------------------------------------------------------------------------------
// cp.async.

void land(Thread &issuer, const Copy &copy) {
    unsigned char *dst = shared_at(copy.dst, 16, 16, "cp.async");
    if (copy.src != nullptr)
        memcpy(dst, copy.src, 16);
    else
        memset(dst, 0, 16);
    race_cp_async_land(issuer, dst);
}

void cp_async_16(uint32_t dst, const void *src, bool valid) {
    Thread &t = *static_cast<Thread *>(tls_thread);
    Cta &c = *t.owner;
    unsigned char *d = shared_at(dst, 16, 16, "cp.async destination");
    if (valid) {
        if (reinterpret_cast<uintptr_t>(src) % 16 != 0) fail("cp.async: global source %p is not 16-byte aligned", src);
        if (!in_registered_buffer(*c.launch, src, 16))
            fail("cp.async: global bytes [%p, +16) are outside every buffer of the launch", src);
        c.counters.bytes_global_to_shared += 16;
    } else {
        ++c.counters.cp_async_zero_fill;
    }
    ++c.counters.cp_async;
    // Until the copy lands, its destination reads as poison.
    race_cp_async_issue(t, d);
    memset(d, kPoison, 16);
    if (t.groups.empty()) t.groups.emplace_back();
    t.groups.back().push_back(Copy{dst, valid ? static_cast<const unsigned char *>(src) : nullptr});

    std::vector<CopyPhase> &phases = c.copy_phases[t.warp];
    const uint32_t seq = t.cp_seq++;
    CopyPhase *ph = nullptr;
    for (CopyPhase &p : phases)
        if (p.seq == seq) ph = &p;
    if (ph == nullptr) {
        phases.push_back(CopyPhase{seq, 0, {}});
        ph = &phases.back();
    }
    ph->dst[t.lane] = dst;
    ph->issued |= 1u << t.lane;
    if (ph->issued == 0xffffffffu) {
        for (int q = 0; q < 4; ++q) c.counters.cp_async_conflicts += phase_conflicts(ph->dst + 8 * q, 8);
        *ph = phases.back();
        phases.pop_back();
    }
}

void cp_async_commit() {
    Thread &t = *static_cast<Thread *>(tls_thread);
    if (t.groups.empty()) t.groups.emplace_back();
    t.groups.emplace_back();  // the next open group
}

// cp.async.wait_group N: every committed group but the newest N has landed.
void cp_async_wait(int pending) {
    Thread &t = *static_cast<Thread *>(tls_thread);
    if (t.groups.empty()) return;
    const int committed = int(t.groups.size()) - 1;  // the last one is still open
    int to_land = committed - pending;
    auto g = t.groups.begin();
    for (; to_land > 0; --to_land, ++g)
        for (const Copy &copy : *g) land(t, copy);
    t.groups.erase(t.groups.begin(), g);
}

// Early landing: one pending copy of a random thread arrives now.
void land_one_early(Cta &c) {
    Thread &t = c.threads[c.rng() % c.threads.size()];
    for (std::vector<Copy> &g : t.groups)
        if (!g.empty()) {
            const size_t i = c.rng() % g.size();
            ThreadView *saved = tls_thread;
            tls_thread = &t;  // shared_at's errors name the copy's thread
            land(t, g[i]);
            tls_thread = saved;
            // It stays in its group: landing it again at the wait rewrites the same bytes.
            return;
        }
}

// ---------------------------------------------------------------------------------
// Warp collectives.

float half_to_float(uint16_t h) {
    const uint32_t sign = uint32_t(h & 0x8000u) << 16;
    const int exp = (h >> 10) & 0x1f;
    uint32_t mant = h & 0x3ffu;
    uint32_t bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (mant << 13);
    } else if (exp != 0) {
        bits = sign | uint32_t(exp - 15 + 127) << 23 | (mant << 13);
    } else if (mant == 0) {
        bits = sign;
    } else {
        int e = -14;
        while (!(mant & 0x400u)) {
            mant <<= 1;
            --e;
        }
        bits = sign | uint32_t(e + 127) << 23 | ((mant & 0x3ffu) << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

float bf16_to_float(uint16_t h) {
    const uint32_t bits = uint32_t(h) << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

// mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32, fragments as the
// PTX ISA lays them out (groupID = lane / 4, threadID_in_group = lane % 4). The
// products of 16-bit inputs are exact in f32; each d is c plus the 16 products
// summed in double and rounded once to f32 (the ISA does not fix the hardware's
// internal order, so the last bit may differ from a GPU's).
static void execute_mma(Cta &c, int w, bool bf16) {
    float A[16][16], B[16][8], C[16][8];
    auto elem = [bf16](uint32_t reg, int half) {
        const uint16_t h = uint16_t(half ? reg >> 16 : reg & 0xffffu);
        return bf16 ? bf16_to_float(h) : half_to_float(h);
    };
    for (int lane = 0; lane < 32; ++lane) {
        const LaneIo &io = c.threads[32 * w + lane].io;
        const int g = lane / 4, t = lane % 4;
        for (int e = 0; e < 2; ++e) {
            A[g][2 * t + e] = elem(io.in[0], e);
            A[g + 8][2 * t + e] = elem(io.in[1], e);
            A[g][2 * t + 8 + e] = elem(io.in[2], e);
            A[g + 8][2 * t + 8 + e] = elem(io.in[3], e);
            B[2 * t + e][g] = elem(io.in[4], e);
            B[2 * t + 8 + e][g] = elem(io.in[5], e);
        }
        float cv[4];
        memcpy(cv, io.in + 6, 16);
        C[g][2 * t] = cv[0];
        C[g][2 * t + 1] = cv[1];
        C[g + 8][2 * t] = cv[2];
        C[g + 8][2 * t + 1] = cv[3];
    }
    float D[16][8];
    for (int i = 0; i < 16; ++i)
        for (int j = 0; j < 8; ++j) {
            double s = C[i][j];
            for (int k = 0; k < 16; ++k) s += double(A[i][k] * B[k][j]);
            D[i][j] = float(s);
        }
    for (int lane = 0; lane < 32; ++lane) {
        LaneIo &io = c.threads[32 * w + lane].io;
        const int g = lane / 4, t = lane % 4;
        const float d[4] = {D[g][2 * t], D[g][2 * t + 1], D[g + 8][2 * t], D[g + 8][2 * t + 1]};
        memcpy(io.out, d, 16);
    }
    ++c.counters.mma;
}

// ldmatrix.sync.aligned.m8n8.x4{.trans}.shared.b16: lanes 8j .. 8j + 7 give the row
// addresses of matrix j; lane l receives in register j row l / 4, elements
// 2 (l % 4) and + 1 (with .trans: column l / 4, rows 2 (l % 4) and + 1).
static void execute_ldmatrix(Cta &c, int w, bool trans) {
    const unsigned char *rows[4][8];
    for (int j = 0; j < 4; ++j) {
        uint32_t addr[8];
        for (int i = 0; i < 8; ++i) {
            Thread &t = c.threads[32 * w + 8 * j + i];
            addr[i] = t.io.in[0];
            ThreadView *saved = tls_thread;
            tls_thread = &t;  // an error names the lane that gave the address
            rows[j][i] = shared_at(addr[i], 16, 16, trans ? "ldmatrix.trans row" : "ldmatrix row");
            if (kRacecheck) race_access(t, rows[j][i], 16, false, true);
            tls_thread = saved;
        }
        c.counters.ldmatrix_conflicts += phase_conflicts(addr, 8);
    }
    for (int lane = 0; lane < 32; ++lane) {
        LaneIo &io = c.threads[32 * w + lane].io;
        for (int j = 0; j < 4; ++j) {
            uint16_t lo, hi;
            if (!trans) {
                memcpy(&lo, rows[j][lane / 4] + 4 * (lane % 4), 2);
                memcpy(&hi, rows[j][lane / 4] + 4 * (lane % 4) + 2, 2);
            } else {
                memcpy(&lo, rows[j][2 * (lane % 4)] + 2 * (lane / 4), 2);
                memcpy(&hi, rows[j][2 * (lane % 4) + 1] + 2 * (lane / 4), 2);
            }
            io.out[j] = uint32_t(lo) | uint32_t(hi) << 16;
        }
    }
    ++c.counters.ldmatrix;
}

void execute(Cta &c, int w, Op op, uint32_t mask) {
    switch (op) {
        case Op::kNone: break;
        case Op::kSyncWarp:
            ++c.counters.warp_syncs;
            ++c.warps[w].syncs;
            break;
        case Op::kShflXor: {
            for (int lane = 0; lane < 32; ++lane) {
                if (!(mask >> lane & 1)) continue;
                LaneIo &io = c.threads[32 * w + lane].io;
                const int width = int(io.in[3]);
                const int src = lane ^ int(io.in[2] & 31);
                int from = lane;
                if (width > 0 && src / width <= lane / width) from = src;
                if (!(mask >> from & 1)) {
                    tls_thread = &c.threads[32 * w + lane];
                    fail("__shfl_xor_sync reads lane %d, which is not in the mask 0x%08x", from, mask);
                }
                memcpy(io.out, c.threads[32 * w + from].io.in, 8);
            }
            ++c.counters.warp_syncs;
            break;
        }
        case Op::kVoteAny: {
            uint32_t any = 0;
            for (int lane = 0; lane < 32; ++lane)
                if (mask >> lane & 1) any |= c.threads[32 * w + lane].io.in[0];
            for (int lane = 0; lane < 32; ++lane)
                if (mask >> lane & 1) c.threads[32 * w + lane].io.out[0] = any;
            ++c.counters.warp_syncs;
            break;
        }
        case Op::kLdmatrix:
        case Op::kLdmatrixTrans: execute_ldmatrix(c, w, op == Op::kLdmatrixTrans); break;
        case Op::kMmaF16:
        case Op::kMmaBf16: execute_mma(c, w, op == Op::kMmaBf16); break;
        case Op::kElect:
            // elect.sync: the leader is the lowest lane of the member mask.
            for (int lane = 0; lane < 32; ++lane) c.threads[32 * w + lane].io.out[0] = lane == __builtin_ctz(mask);
            break;
        case Op::kWgmmaCommit: wgmma_commit_warp(c, w); break;
        case Op::kWgmmaWait: {
            const uint32_t pending = c.threads[32 * w].io.in[0];
            for (int lane = 1; lane < 32; ++lane)
                if (c.threads[32 * w + lane].io.in[0] != pending) {
                    tls_thread = &c.threads[32 * w + lane];
                    fail("wgmma.wait_group %u in this lane, %u in lane 0", c.threads[32 * w + lane].io.in[0], pending);
                }
            wgmma_retire_warp(c, w, int(pending));
            break;
        }
    }
}
}  // namespace cpu
}  // namespace maskattn
