// The sm_90 synchronisation instructions on the CPU backend, as the PTX ISA defines
// them: mbarriers (sections "Parallel Synchronization and Communication
// Instructions: mbarrier": init, arrive, expect-tx, complete-tx, try_wait.parity,
// phases), named barriers (bar.sync / bar.arrive with a thread count), elect.sync,
// setmaxnreg, fence.mbarrier_init and fence.proxy.async, and the warpgroup
// rendezvous that wgmma and setmaxnreg are collectives of.
//
// An mbarrier's state lives beside its 8 bytes of shared memory (the kernels never
// read those bytes). A phase completes when its pending arrivals and its transaction
// bytes both reach zero; the waiters of that phase then run again. For racecheck,
// the completion is the only ordering an mbarrier gives: the arrivals' vector
// clocks (and the clocks of the bulk copies that completed transactions on it) are
// joined into the phase and acquired by each waiter that sees it complete.
#include "cpu/internal.h"

namespace maskattn {
namespace cpu {

static Thread &me() { return *static_cast<Thread *>(tls_thread); }

// The mbarrier at `bar`; using it reads its object (racecheck: ordered after its init).
static Mbarrier &barrier_at(Thread &t, uint32_t bar, const char *what) {
    Cta &c = *t.owner;
    unsigned char *p = shared_at(bar, 8, 8, what);
    auto it = c.mbarriers.find(bar);
    if (it == c.mbarriers.end()) fail("%s: shared address 0x%x holds no initialised mbarrier", what, bar);
    if (kRacecheck) race_access(t, p, 8, false);
    return it->second;
}

static void complete_phase_if_done(Cta &c, Mbarrier &b) {
    if (b.pending != 0 || b.tx != 0) return;
    // The phase's copies become visible now, written by the TMA unit.
    for (const LandedElement &e : b.landed) {
        memcpy(e.dst, e.bytes, e.n);
        if (const unsigned char *conflict = race_bulk_land(c, e.dst, e.n, e.epoch)) {
            ++c.counters.races;
            char msg[200];
            snprintf(msg, sizeof msg,
                     "race on shared byte 0x%x: a bulk copy lands on it while a wgmma still reads it (issued, not "
                     "yet retired)",
                     shared_address_of(c, conflict));
            record_error(*c.launch, &c, nullptr, msg);
            c.failed = true;
            return;
        }
    }
    b.landed.clear();
    ++b.phase;
    b.pending = b.expected;
    if (c.clocks) {
        b.completed = b.arrivals;
        std::fill(b.arrivals.begin(), b.arrivals.end(), 0);
    }
    for (int w : b.waiters) make_ready(c, w);
    b.waiters.clear();
}

// The ISA bounds the transaction count to [-(2^20 - 1), 2^20 - 1].
static bool tx_in_range(int64_t tx) { return tx > -(int64_t(1) << 20) && tx < (int64_t(1) << 20); }

void mbarrier_init(uint32_t bar, uint32_t count) {
    Thread &t = me();
    Cta &c = *t.owner;
    unsigned char *p = shared_at(bar, 8, 8, "mbarrier.init");
    if (count == 0 || count >= (1u << 20)) fail("mbarrier.init with count %u (1 .. 2^20 - 1)", count);
    start_clocks(c);
    Mbarrier &b = c.mbarriers[bar];
    if (!b.waiters.empty()) fail("mbarrier.init of the barrier at 0x%x while threads wait on it", bar);
    b = Mbarrier{count, count, 0, 0, {}, {}, {}, t.linear, false, {}};
    if (kRacecheck) race_access(t, p, 8, true);
    memset(p, 0, 8);
}

void fence_mbarrier_init() {
    Thread &t = me();
    for (auto &entry : t.owner->mbarriers)
        if (entry.second.init_thread == t.linear) entry.second.init_fenced = true;
}

void fence_proxy_async() { ++me().proxy_fences; }

void mbarrier_arrive(uint32_t bar, uint32_t tx_bytes) {
    Thread &t = me();
    Cta &c = *t.owner;
    Mbarrier &b = barrier_at(t, bar, tx_bytes ? "mbarrier.arrive.expect_tx" : "mbarrier.arrive");
    b.tx += tx_bytes;
    if (!tx_in_range(b.tx)) fail("mbarrier at 0x%x: transaction count %lld out of range", bar, (long long)b.tx);
    clock_release(t, b.arrivals);
    --b.pending;
    complete_phase_if_done(c, b);
}

void mbarrier_complete_tx(Cta &c, uint32_t bar, std::vector<LandedElement> &&landed, uint32_t bytes,
                          uint32_t tma_epoch) {
    auto it = c.mbarriers.find(bar);
    if (it == c.mbarriers.end()) {
        char msg[160];
        snprintf(msg, sizeof msg, "a bulk copy completes on shared address 0x%x, which no longer holds an mbarrier", bar);
        record_error(*c.launch, &c, nullptr, msg);
        c.failed = true;
        return;
    }
    Mbarrier &b = it->second;
    b.landed.insert(b.landed.end(), landed.begin(), landed.end());
    b.tx -= bytes;
    if (c.clocks) {
        b.arrivals.resize(c.threads.size() + 1, 0);
        b.arrivals.back() = std::max(b.arrivals.back(), tma_epoch);
    }
    complete_phase_if_done(c, b);
}

bool mbarrier_try_wait(uint32_t bar, uint32_t parity) {
    Thread &t = me();
    for (;;) {
        Mbarrier &b = barrier_at(t, bar, "mbarrier.try_wait.parity");
        // The phase of `parity` is complete once the barrier is in a phase of the other.
        if ((b.phase & 1) != (parity & 1)) {
            clock_acquire(t, b.completed);
            return true;
        }
        check_not_awaited(t, "waits on an mbarrier");
        b.waiters.push_back(t.linear);
        t.status = Status::kAtMbarrier;
        t.waits_on = bar;
        t.wait_parity = parity;
        yield(t);
    }
}

bool mbarrier_test_wait(uint32_t bar, uint32_t parity) {
    Thread &t = me();
    Mbarrier &b = barrier_at(t, bar, "mbarrier.test_wait.parity");
    if ((b.phase & 1) != (parity & 1)) {
        clock_acquire(t, b.completed);
        return true;
    }
    make_ready(*t.owner, t.linear);
    yield(t);
    return false;
}

void mbarrier_tx(uint32_t bar, int64_t bytes) {
    Thread &t = me();
    Mbarrier &b = barrier_at(t, bar, bytes > 0 ? "mbarrier.expect_tx" : "mbarrier.complete_tx");
    b.tx += bytes;
    if (!tx_in_range(b.tx)) fail("mbarrier at 0x%x: transaction count %lld out of range", bar, (long long)b.tx);
    // .relaxed: no release of this thread's accesses; only arrivals and copies order.
    complete_phase_if_done(*t.owner, b);
}

void named_barrier(int id, int threads, bool wait) {
    Thread &t = me();
    Cta &c = *t.owner;
    const char *what = wait ? "bar.sync" : "bar.arrive";
    if (id < 1 || id > 15) fail("%s %d: named barriers are 1..15 (0 is __syncthreads')", what, id);
    if (threads <= 0 || threads % 32 != 0 || size_t(threads) > c.threads.size())
        fail("%s %d with %d threads: a multiple of 32, at most the block's %zu", what, id, threads, c.threads.size());
    start_clocks(c);
    NamedBarrier &b = c.named[id];
    if (b.expected == 0) {
        b.expected = threads;
        b.arrived = 0;
    } else if (b.expected != threads) {
        fail("%s %d with %d threads while the barrier is counting to %d", what, id, threads, b.expected);
    }
    clock_release(t, b.joined);
    if (++b.arrived == b.expected) {
        for (int w : b.waiters) {
            clock_acquire(c.threads[size_t(w)], b.joined);
            make_ready(c, w);
        }
        if (wait) clock_acquire(t, b.joined);
        b = NamedBarrier{0, 0, {}, {}};
        make_ready(c, t.linear);
        yield(t);
        return;
    }
    if (!wait) return;
    check_not_awaited(t, "waits at a named barrier");
    b.waiters.push_back(t.linear);
    t.status = Status::kAtNamedBarrier;
    t.named_barrier = id;
    yield(t);
}

bool elect_one() {
    collective(Op::kElect, 0xffffffffu);
    return self().io.out[0] != 0;
}

void warpgroup_rendezvous(Thread &t, int op, const void *arg, void (*run)(Cta &c, int warpgroup)) {
    Cta &c = *t.owner;
    const int wg = t.warp / 4;
    const char *name = op == kGroupWgmma ? "wgmma.mma_async" : "setmaxnreg";
    if (size_t(wg + 1) * 128 > c.threads.size())
        fail("%s is a warpgroup instruction: warp %d's warpgroup (warps %d-%d) is not whole in a block of %zu threads",
             name, t.warp, 4 * wg, 4 * wg + 3, c.threads.size());
    check_not_awaited(t, name);
    Warpgroup &g = c.warpgroups[size_t(wg)];
    if (g.op == 0) {
        g.op = op;
    } else if (g.op != op) {
        fail("divergence: warpgroup %d has threads at %s, this thread reached %s", wg,
             g.op == kGroupWgmma ? "wgmma.mma_async" : "setmaxnreg", name);
    }
    t.group_arg = arg;
    if (++g.arrived == 128) {
        run(c, wg);
        g.op = 0;
        g.arrived = 0;
        for (int i = 128 * wg; i < 128 * (wg + 1); ++i)
            if (i != t.linear) make_ready(c, i);
        make_ready(c, t.linear);
    } else {
        t.status = Status::kAtWarpgroup;
    }
    yield(t);
}

static void run_setmaxnreg(Cta &c, int wg) {
    const int first = *static_cast<const int *>(c.threads[size_t(128 * wg)].group_arg);
    for (int i = 128 * wg; i < 128 * (wg + 1); ++i) {
        const int r = *static_cast<const int *>(c.threads[size_t(i)].group_arg);
        if (r != first) {
            tls_thread = &c.threads[size_t(i)];
            fail("setmaxnreg: this thread asks for %d registers, thread %d of its warpgroup for %d", r < 0 ? -r : r,
                 128 * wg, first < 0 ? -first : first);
        }
    }
    // Signed: + for .inc, - for .dec. The count may only move the named way.
    Warpgroup &g = c.warpgroups[size_t(wg)];
    const int regs = first < 0 ? -first : first;
    if (g.regs != 0 && ((first > 0 && regs < g.regs) || (first < 0 && regs > g.regs)))
        fail("setmaxnreg.%s to %d registers from %d", first > 0 ? "inc" : "dec", regs, g.regs);
    g.regs = regs;
}

void setmaxnreg(int regs, bool inc) {
    if (regs < 24 || regs > 256 || regs % 8 != 0) fail("setmaxnreg %d: 24..256 in steps of 8", regs);
    const int signed_regs = inc ? regs : -regs;
    warpgroup_rendezvous(me(), kGroupSetmaxnreg, &signed_regs, &run_setmaxnreg);
}

std::string describe_sm90_waits(const Cta &c) {
    std::string s;
    char buf[256];
    for (const auto &entry : c.mbarriers) {
        const Mbarrier &b = entry.second;
        if (b.waiters.empty()) continue;
        std::vector<int> warps;
        for (int w : b.waiters)
            if (std::find(warps.begin(), warps.end(), w / 32) == warps.end()) warps.push_back(w / 32);
        std::sort(warps.begin(), warps.end());
        std::string ws;
        for (int w : warps) ws += (ws.empty() ? "" : ",") + std::to_string(w);
        snprintf(buf, sizeof buf,
                 " %zu thread(s) of warp(s) {%s} wait on the mbarrier at 0x%x for parity %u (phase %u: %u of %u "
                 "arrivals and %lld transaction bytes missing);",
                 b.waiters.size(), ws.c_str(), entry.first, c.threads[size_t(b.waiters[0])].wait_parity, b.phase,
                 b.pending, b.expected, (long long)b.tx);
        s += buf;
    }
    for (int id = 1; id < 16; ++id)
        if (!c.named[id].waiters.empty()) {
            snprintf(buf, sizeof buf, " %zu thread(s) wait at named barrier %d (%d of %d arrived);",
                     c.named[id].waiters.size(), id, c.named[id].arrived, c.named[id].expected);
            s += buf;
        }
    for (size_t wg = 0; wg < c.warpgroups.size(); ++wg)
        if (c.warpgroups[wg].arrived > 0) {
            snprintf(buf, sizeof buf, " warpgroup %zu: %d of 128 threads at %s;", wg, c.warpgroups[wg].arrived,
                     c.warpgroups[wg].op == kGroupWgmma ? "wgmma.mma_async" : "setmaxnreg");
            s += buf;
        }
    return s;
}

}  // namespace cpu
}  // namespace maskattn
