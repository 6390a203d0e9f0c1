// wgmma on the CPU backend, as the PTX ISA defines it ("Asynchronous Warpgroup Level
// Matrix Multiply-Accumulate Instructions"): wgmma.mma_async is a collective of the
// warpgroup's 128 threads; it is asynchronous, so it only computes at the
// wgmma.wait_group that retires its group. Between the two:
// - its accumulator registers read as NaN (a kernel that reads them early sees it),
//   and one written by the kernel in flight is an error at the retirement;
// - its shared operands count as being read (racecheck: a write to them is a race).
// Each warp retires its own 16 rows of the 64 at its own wait_group, reading the
// operands then (any moment between issue and wait is the hardware's to choose). The
// address maps and fragment layouts are the pure functions of sm90_isa.h.
#include "cpu/internal.h"
#include "cpu/sm90_isa.h"

namespace maskattn {
namespace cpu {

struct WgmmaOp {
    WgmmaIssue issue;  // the uniform part (n, types, descriptors, scale_d)
    sm90::SmemDesc a, b;
    bool a_in_regs;
    uint32_t a_regs[128][4];
    float *d[128];
    // Per thread: its C input (a copy at issue), or the earlier op in flight on the same
    // registers whose result it takes when that one retires.
    std::vector<float> c[128];
    WgmmaOp *chained_to[128];
    // Racecheck: the shared bytes each warp's part reads.
    std::vector<uint32_t> reads[4];
};

static constexpr uint32_t kPoisonBits = 0xffffffffu;

static float elem_to_float(uint16_t h, bool bf16) { return bf16 ? bf16_to_float(h) : half_to_float(h); }

// The shared addresses of an operand's elements, rows 0..rows-1, k 0..15.
static void operand_addresses(const sm90::SmemDesc &d, bool mn_major, int rows, std::vector<uint32_t> &out) {
    out.resize(size_t(rows) * 16);
    for (int r = 0; r < rows; ++r)
        for (int k = 0; k < 16; ++k) out[size_t(r) * 16 + size_t(k)] = sm90::operand_address(d, mn_major, r, k);
}

static void check_operand(Thread &t, const std::vector<uint32_t> &addrs, const char *what) {
    for (uint32_t a : addrs) check_proxy_fence(t, shared_at(a, 2, 2, what), 2, what);
}

static void run_wgmma(Cta &c, int wg) {
    auto op = std::make_shared<WgmmaOp>();
    const Thread &first = c.threads[size_t(128 * wg)];
    const WgmmaIssue &u = *static_cast<const WgmmaIssue *>(first.group_arg);
    op->issue = u;
    op->a_in_regs = u.a_regs != nullptr;
    ThreadView *running = tls_thread;
    for (int i = 0; i < 128; ++i) {
        Thread &t = c.threads[size_t(128 * wg + i)];
        const WgmmaIssue &x = *static_cast<const WgmmaIssue *>(t.group_arg);
        tls_thread = &t;  // an error names the thread that differs
        if (x.n != u.n || x.bf16 != u.bf16 || x.trans_a != u.trans_a || x.trans_b != u.trans_b ||
            x.scale_d != u.scale_d || (x.a_regs != nullptr) != op->a_in_regs || x.desc_b != u.desc_b ||
            (!op->a_in_regs && x.desc_a != u.desc_a))
            fail("wgmma.mma_async: this thread's shape, types, descriptors or scale-d differ from thread %d's of "
                 "its warpgroup",
                 128 * wg);
        if (!t.wgmma_fenced)
            fail("wgmma.mma_async without a wgmma.fence since this thread's last wgmma.wait_group (the "
                 "accumulator and A registers it touched are not ordered before the wgmma)");
        op->d[i] = x.d;
        if (op->a_in_regs) memcpy(op->a_regs[i], x.a_regs, 16);
    }
    tls_thread = running;
    Thread &last = *static_cast<Thread *>(tls_thread);
    const char *why = nullptr;
    if ((!op->a_in_regs && !sm90::decode_smem_desc(u.desc_a, op->a, &why)) ||
        !sm90::decode_smem_desc(u.desc_b, op->b, &why))
        fail("wgmma.mma_async: %s", why);
    std::vector<uint32_t> a_addr, b_addr;
    if (!op->a_in_regs) {
        operand_addresses(op->a, u.trans_a, 64, a_addr);
        check_operand(last, a_addr, "wgmma.mma_async A operand");
    }
    operand_addresses(op->b, u.trans_b, u.n, b_addr);
    check_operand(last, b_addr, "wgmma.mma_async B operand");
    for (int w = 0; w < 4; ++w) {
        std::vector<uint32_t> &r = op->reads[w];
        if (!op->a_in_regs) r.insert(r.end(), a_addr.begin() + 16 * 16 * w, a_addr.begin() + 16 * 16 * (w + 1));
        r.insert(r.end(), b_addr.begin(), b_addr.end());
        for (uint32_t a : r) race_async_read_begin(c, shared_ptr(c, a, 2), 2);
    }
    // The C input, then the registers poisoned until the op retires.
    const int regs = u.n / 2;
    for (int i = 0; i < 128; ++i) {
        op->chained_to[i] = nullptr;
        const int w = 4 * wg + i / 32;
        for (auto &group : c.wgmma_groups[size_t(w)])
            for (auto &prior : group)
                if (prior->d[i] == op->d[i]) op->chained_to[i] = prior.get();
        if (u.scale_d && op->chained_to[i] == nullptr) op->c[i].assign(op->d[i], op->d[i] + regs);
        for (int j = 0; j < regs; ++j) memcpy(&op->d[i][j], &kPoisonBits, 4);
    }
    for (int w = 4 * wg; w < 4 * wg + 4; ++w) {
        auto &groups = c.wgmma_groups[size_t(w)];
        if (groups.empty()) groups.emplace_back();
        groups.back().push_back(op);
    }
    ++c.counters.wgmma;
}

void wgmma(const WgmmaIssue &issue) {
    Thread &t = *static_cast<Thread *>(tls_thread);
    warpgroup_rendezvous(t, kGroupWgmma, &issue, &run_wgmma);
}

void wgmma_fence() { static_cast<Thread *>(tls_thread)->wgmma_fenced = true; }

void wgmma_commit() { collective(Op::kWgmmaCommit, 0xffffffffu); }

void wgmma_wait(int pending) {
    self().io.in[0] = uint32_t(pending);
    collective(Op::kWgmmaWait, 0xffffffffu);
}

void wgmma_commit_warp(Cta &c, int w) {
    auto &groups = c.wgmma_groups[size_t(w)];
    if (groups.empty()) groups.emplace_back();
    groups.emplace_back();  // the next open group
}

// Warp w's 16 rows of `op`: D = A B (+ C), each element the exact products summed in
// double and rounded once to f32, as the mma.sync emulation does.
static void retire_rows(Cta &c, int w, WgmmaOp &op) {
    const WgmmaIssue &u = op.issue;
    const int wg = w / 4, wi = w % 4, regs = u.n / 2;
    auto smem_elem = [&](uint32_t addr) {
        uint16_t h;
        memcpy(&h, shared_ptr(c, addr, 2), 2);
        return elem_to_float(h, u.bf16);
    };
    // A from registers: where each A[row][k] of this warp's rows sits.
    float A[16][16];
    if (op.a_in_regs) {
        for (int t = 32 * wi; t < 32 * wi + 32; ++t)
            for (int r = 0; r < 4; ++r)
                for (int h = 0; h < 2; ++h) {
                    int row, k;
                    sm90::a_register_coord(t, r, h, row, k);
                    if (row < 16 * wi || row >= 16 * wi + 16 || k < 0 || k >= 16)
                        fail("A fragment map: thread %d register %d holds A[%d][%d], outside warp %d's rows", t, r,
                             row, k, wi);
                    A[row - 16 * wi][k] = elem_to_float(uint16_t(op.a_regs[t][r] >> (16 * h)), u.bf16);
                }
    } else {
        for (int row = 0; row < 16; ++row)
            for (int k = 0; k < 16; ++k)
                A[row][k] = smem_elem(sm90::operand_address(op.a, u.trans_a, 16 * wi + row, k));
    }
    std::vector<float> B(size_t(u.n) * 16);
    for (int n = 0; n < u.n; ++n)
        for (int k = 0; k < 16; ++k) B[size_t(n) * 16 + size_t(k)] = smem_elem(sm90::operand_address(op.b, u.trans_b, n, k));
    for (int t = 32 * wi; t < 32 * wi + 32; ++t) {
        std::vector<float> result(static_cast<size_t>(regs));
        for (int j = 0; j < regs; ++j) {
            int row, col;
            sm90::accumulator_coord(t, j, row, col);
            if (row < 16 * wi || row >= 16 * wi + 16 || col < 0 || col >= u.n)
                fail("accumulator map: thread %d register %d holds D[%d][%d], outside warp %d's rows", t, j, row, col,
                     wi);
            double s = u.scale_d ? double(op.c[t][size_t(j)]) : 0.0;
            for (int k = 0; k < 16; ++k) s += double(A[row - 16 * wi][k] * B[size_t(col) * 16 + size_t(k)]);
            result[size_t(j)] = float(s);
        }
        // A later op in flight on the same registers takes this result as its C.
        WgmmaOp *next = nullptr;
        for (auto &group : c.wgmma_groups[size_t(w)])
            for (auto &later : group)
                if (later->chained_to[t] == &op) next = later.get();
        if (next != nullptr) {
            next->chained_to[t] = nullptr;
            if (next->issue.scale_d) next->c[t] = result;
            continue;
        }
        float *d = op.d[t];
        for (int j = 0; j < regs; ++j) {
            uint32_t bits;
            memcpy(&bits, &d[j], 4);
            if (bits != kPoisonBits) {
                tls_thread = &c.threads[size_t(128 * wg + t)];
                fail("accumulator register %d of this thread was written while its wgmma was in flight (before the "
                     "wgmma.wait_group that retires it)",
                     j);
            }
        }
        memcpy(d, result.data(), size_t(regs) * 4);
    }
    Thread &reader = c.threads[size_t(32 * w)];
    for (uint32_t a : op.reads[wi]) race_async_read_end(reader, shared_ptr(c, a, 2), 2);
}

// wgmma.wait_group N for warp w: every committed group but the newest N retires.
void wgmma_retire_warp(Cta &c, int w, int pending) {
    auto &groups = c.wgmma_groups[size_t(w)];
    if (!groups.empty()) {
        int to_retire = int(groups.size()) - 1 - pending;
        auto g = groups.begin();
        for (; to_retire > 0; --to_retire, ++g)
            for (auto &op : *g) retire_rows(c, w, *op);
        groups.erase(groups.begin(), g);
        if (groups.size() == 1 && groups[0].empty()) groups.clear();
    }
    for (int lane = 0; lane < 32; ++lane) c.threads[size_t(32 * w + lane)].wgmma_fenced = false;
}

}  // namespace cpu
}  // namespace maskattn
