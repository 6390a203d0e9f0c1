// The CPU backend's execution: launches, CTAs on OS threads, CUDA threads as fibers,
// warp collectives as rendezvous, __syncthreads, the CTA scheduler and its deadlock
// report. See csrc/cpu/runtime.h (what the primitives see) and internal.h.
//
// Fibers are a context switch of our own (x86-64: callee-saved registers, MXCSR
// and the x87 control word; elsewhere ucontext). Boost.Context would do the same,
// but a switch between fibers of one CTA happens 64 times per mma instruction, so
// it must cost nanoseconds (glibc's swapcontext makes a signal-mask system call
// each time), and a dozen lines of assembly need no extra package on CI.
#include "cpu/internal.h"

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

namespace maskattn {
namespace cpu {

__thread ThreadView *tls_thread = nullptr;

uint3 uint3_of(uint32_t x, uint32_t y, uint32_t z) {
    uint3 r;
    r.x = x;
    r.y = y;
    r.z = z;
    return r;
}

// ---------------------------------------------------------------------------------
// Context switch.

#if defined(__x86_64__)
extern "C" void maskattn_cpu_switch(void **save_sp, void *next_sp);
extern "C" void maskattn_cpu_fiber_start();
asm(R"(
    .text
    .globl maskattn_cpu_switch
    .type maskattn_cpu_switch, @function
maskattn_cpu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size maskattn_cpu_switch, .-maskattn_cpu_switch

    .globl maskattn_cpu_fiber_start
    .type maskattn_cpu_fiber_start, @function
maskattn_cpu_fiber_start:
    movq %r12, %rdi
    callq *%r13
    ud2
    .size maskattn_cpu_fiber_start, .-maskattn_cpu_fiber_start
)");

// A fresh context that calls fn(arg) on the stack [base, base + size).
static void make_context(Context &c, void *base, size_t size, void (*fn)(void *), void *arg) {
    uintptr_t top = (reinterpret_cast<uintptr_t>(base) + size) & ~uintptr_t(15);
    uint64_t *sp = reinterpret_cast<uint64_t *>(top - 16 - 64);  // 16-aligned, as the switch expects
    uint32_t csr[2];
    asm volatile("stmxcsr %0" : "=m"(csr[0]));
    asm volatile("fnstcw %0" : "=m"(csr[1]));
    memcpy(&sp[0], csr, 8);
    sp[1] = 0;                                            // r15
    sp[2] = 0;                                            // r14
    sp[3] = reinterpret_cast<uint64_t>(fn);               // r13
    sp[4] = reinterpret_cast<uint64_t>(arg);              // r12
    sp[5] = 0;                                            // rbx
    sp[6] = 0;                                            // rbp
    sp[7] = reinterpret_cast<uint64_t>(&maskattn_cpu_fiber_start);
    c.sp = sp;
}

static inline void switch_context(Context &from, Context &to) { maskattn_cpu_switch(&from.sp, to.sp); }
#else

// makecontext passes int arguments only: the pointer travels in two halves.
static void ucontext_entry(unsigned lo, unsigned hi) {
    auto **call = reinterpret_cast<void **>(uintptr_t(lo) | (uintptr_t(hi) << 32));
    reinterpret_cast<void (*)(void *)>(call[0])(call[1]);
}

static void make_context(Context &c, void *base, size_t size, void (*fn)(void *), void *arg) {
    getcontext(&c.uc);
    c.uc.uc_stack.ss_sp = base;
    c.uc.uc_stack.ss_size = size;
    c.uc.uc_link = nullptr;
    // The (fn, arg) pair lives at the stack's base, below anything the fiber uses.
    void **call = static_cast<void **>(base);
    call[0] = reinterpret_cast<void *>(fn);
    call[1] = arg;
    c.uc.uc_stack.ss_sp = static_cast<unsigned char *>(base) + 64;
    c.uc.uc_stack.ss_size = size - 64;
    const uintptr_t p = reinterpret_cast<uintptr_t>(call);
    makecontext(&c.uc, reinterpret_cast<void (*)()>(&ucontext_entry), 2, unsigned(p), unsigned(uint64_t(p) >> 32));
}

static inline void switch_context(Context &from, Context &to) { swapcontext(&from.uc, &to.uc); }
#endif

// ---------------------------------------------------------------------------------
// Kernel registry.

static std::map<std::string, KernelEntry> &registry() {
    static std::map<std::string, KernelEntry> r;
    return r;
}

void register_kernel(const char *name, void (*fn)(), Trampoline trampoline, size_t args_bytes) {
    registry()[name] = KernelEntry{fn, trampoline, args_bytes};
}

void warp_lanes(char *buf, size_t n, uint32_t mask) {
    size_t used = 0;
    buf[0] = 0;
    for (int l = 0; l < 32 && used + 8 < n;) {
        if (!(mask >> l & 1)) {
            ++l;
            continue;
        }
        int e = l;
        while (e + 1 < 32 && (mask >> (e + 1) & 1)) ++e;
        used += snprintf(buf + used, n - used, used ? ",%d" : "%d", l);
        if (e > l) used += snprintf(buf + used, n - used, "-%d", e);
        l = e + 1;
    }
}

const char *op_name(Op op) {
    switch (op) {
        case Op::kNone: return "nothing";
        case Op::kSyncWarp: return "__syncwarp";
        case Op::kShflXor: return "__shfl_xor_sync";
        case Op::kVoteAny: return "__any_sync";
        case Op::kLdmatrix: return "ldmatrix.x4";
        case Op::kLdmatrixTrans: return "ldmatrix.x4.trans";
        case Op::kMmaF16: return "mma.m16n8k16.f16";
        case Op::kMmaBf16: return "mma.m16n8k16.bf16";
        case Op::kElect: return "elect.sync";
        case Op::kWgmmaCommit: return "wgmma.commit_group";
        case Op::kWgmmaWait: return "wgmma.wait_group";
    }
    return "?";
}

void record_error(Launch &l, const Cta *cta, const Thread *t, const char *msg) {
    std::lock_guard<std::mutex> lock(l.mutex);
    if (!l.error.empty()) return;
    char where[256];
    if (t != nullptr)
        snprintf(where, sizeof where, "kernel %s, block (%u,%u,%u), warp %d, lane %d (thread %d): ", l.kernel.c_str(),
                 cta->block_idx.x, cta->block_idx.y, cta->block_idx.z, t->warp, t->lane, t->linear);
    else if (cta != nullptr)
        snprintf(where, sizeof where, "kernel %s, block (%u,%u,%u): ", l.kernel.c_str(), cta->block_idx.x,
                 cta->block_idx.y, cta->block_idx.z);
    else
        snprintf(where, sizeof where, "kernel %s: ", l.kernel.c_str());
    l.error = std::string(where) + msg;
    l.failed = true;
}

void yield(Thread &t) {
    Cta &c = *t.owner;
#if defined(MASKATTN_CPU_ASAN)
    void *fake = nullptr;
    __sanitizer_start_switch_fiber(&fake, c.scheduler_stack_bottom, c.scheduler_stack_size);
#endif
    switch_context(t.context, c.scheduler);
#if defined(MASKATTN_CPU_ASAN)
    __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
}

void fail(const char *fmt, ...) {
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    Thread &t = *static_cast<Thread *>(tls_thread);
    Cta &c = *t.owner;
    record_error(*c.launch, &c, &t, msg);
    c.failed = true;
    // The CTA is abandoned: the scheduler never resumes this fiber.
    for (;;) yield(t);
}

void make_ready(Cta &c, int tid) {
    c.threads[tid].status = Status::kReady;
    c.ready.push_back(tid);
}

// A lane about to wait at a barrier or to exit must not be expected at its warp's
// pending collective.
void check_not_awaited(Thread &t, const char *doing) {
    const Warp &w = t.owner->warps[t.warp];
    if (w.op != Op::kNone && (w.mask >> t.lane & 1)) {
        char lanes[128];
        warp_lanes(lanes, sizeof lanes, w.arrived);
        fail("divergence: lanes %s wait at %s (mask 0x%08x) while this lane %s", lanes, op_name(w.op), w.mask, doing);
    }
}

void collective(Op op, uint32_t mask) {
    Thread &t = *static_cast<Thread *>(tls_thread);
    Cta &c = *t.owner;
    Warp &w = c.warps[t.warp];
    const uint32_t present = t.warp == int(c.warps.size()) - 1 && c.threads.size() % 32 != 0
                                 ? (1u << (c.threads.size() % 32)) - 1
                                 : 0xffffffffu;
    if (!(mask >> t.lane & 1)) fail("%s with mask 0x%08x, which does not name the calling lane", op_name(op), mask);
    if ((mask & present) != mask) fail("%s with mask 0x%08x names lanes the block does not have", op_name(op), mask);
    const bool aligned = op == Op::kLdmatrix || op == Op::kLdmatrixTrans || op == Op::kMmaF16 || op == Op::kMmaBf16 ||
                         op == Op::kElect || op == Op::kWgmmaCommit || op == Op::kWgmmaWait;
    if (aligned && mask != 0xffffffffu) fail("%s needs all 32 lanes of the warp", op_name(op));
    if (w.op == Op::kNone) {
        w.op = op;
        w.mask = mask;
        w.arrived = 0;
    } else if (w.op != op || w.mask != mask) {
        char lanes[128];
        warp_lanes(lanes, sizeof lanes, w.arrived);
        fail("divergence: lanes %s wait at %s (mask 0x%08x), this lane reached %s (mask 0x%08x)", lanes,
             op_name(w.op), w.mask, op_name(op), mask);
    }
    // A lane of the mask that already waits at a barrier or has exited never comes:
    // the scheduler then finds no thread to run and reports the divergence.
    w.arrived |= 1u << t.lane;
    if (w.arrived == mask) {
        execute(c, t.warp, op, mask);
        if (c.clocks) {
            int lanes[32], n = 0;
            for (int lane = 0; lane < 32; ++lane)
                if (mask >> lane & 1) lanes[n++] = 32 * t.warp + lane;
            clock_join(c, lanes, n);
        }
        ++w.collectives;
        w.op = Op::kNone;
        for (int lane = 0; lane < 32; ++lane)
            if ((mask >> lane & 1) && lane != t.lane) make_ready(c, 32 * t.warp + lane);
        make_ready(c, t.linear);
    } else {
        t.status = Status::kAtWarp;
    }
    yield(t);
}

void block_barrier() {
    Thread &t = *static_cast<Thread *>(tls_thread);
    Cta &c = *t.owner;
    check_not_awaited(t, "waits at __syncthreads");
    if (c.exited > 0) fail("__syncthreads after %d thread(s) of the block exited", c.exited);
    t.status = Status::kAtBarrier;
    if (++c.at_barrier == int(c.threads.size())) {
        c.at_barrier = 0;
        ++c.counters.barriers;
        if (c.clocks) {
            std::vector<int> all(c.threads.size());
            for (size_t i = 0; i < all.size(); ++i) all[i] = int(i);
            clock_join(c, all.data(), int(all.size()));
        }
        for (Thread &o : c.threads) make_ready(c, o.linear);
    }
    yield(t);
}

void count_key_tile(int cls) {
    Thread &t = *static_cast<Thread *>(tls_thread);
    if (t.linear != 0) return;
    if (cls < 0 || cls > 2) fail("key tile class %d", cls);
    ++t.owner->counters.key_tiles[cls];
}

// ---------------------------------------------------------------------------------
// Fibers and the CTA scheduler.

static void thread_main(void *arg) {
    Thread &t = *static_cast<Thread *>(arg);
#if defined(MASKATTN_CPU_ASAN)
    __sanitizer_finish_switch_fiber(nullptr, nullptr, nullptr);
#endif
    Cta &c = *t.owner;
    const Launch &l = *c.launch;
    l.entry->trampoline(l.entry->fn, l.args);
    check_not_awaited(t, "exits");
    if (c.at_barrier > 0) fail("exits while %d thread(s) wait at __syncthreads", c.at_barrier);
    if (!c.wgmma_groups.empty())
        for (const auto &g : c.wgmma_groups[size_t(t.warp)])
            if (!g.empty()) fail("exits with a wgmma of its warp in flight (no wgmma.wait_group retired it)");
    // Copies still in flight land before the CTA retires.
    for (std::vector<Copy> &g : t.groups)
        for (const Copy &copy : g) land(t, copy);
    t.groups.clear();
    t.status = Status::kExited;
    ++c.exited;
    for (;;) yield(t);
}

struct Stacks {
    size_t size;
    std::vector<unsigned char *> mem;
    ~Stacks() {
        for (unsigned char *m : mem) {
#if defined(MASKATTN_CPU_ASAN)
            // munmap keeps the shadow: whatever is mapped here next must not inherit it.
            __asan_unpoison_memory_region(m + 4096, size - 4096);
#endif
            munmap(m, size);
        }
    }
    // The stack of thread i, with a guard page below it.
    unsigned char *get(size_t i) {
        while (mem.size() <= i) {
            void *m = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
            if (m == MAP_FAILED) return nullptr;
            mprotect(m, 4096, PROT_NONE);
            mem.push_back(static_cast<unsigned char *>(m));
        }
        return mem[i];
    }
};

static int pick(Cta &c) {
    const int policy = c.launch->options.schedule;
    size_t i = 0;
    if (policy == MASKATTN_CPU_SCHEDULE_RANDOM) {
        i = c.rng() % c.ready.size();
    } else if (policy == MASKATTN_CPU_SCHEDULE_VICTIM) {
        // Any other warp first (at random); the victim only when nothing else can run.
        size_t others = 0;
        for (int id : c.ready) others += c.threads[id].warp != c.victim_warp;
        if (others > 0) {
            size_t k = c.rng() % others;
            for (i = 0; i < c.ready.size(); ++i)
                if (c.threads[c.ready[i]].warp != c.victim_warp && k-- == 0) break;
        } else {
            i = c.rng() % c.ready.size();
        }
    } else {
        // Round robin: the lowest ready thread, so warps move in lockstep.
        i = size_t(std::min_element(c.ready.begin(), c.ready.end()) - c.ready.begin());
    }
    const int id = c.ready[i];
    c.ready[i] = c.ready.back();
    c.ready.pop_back();
    return id;
}

static std::string describe_deadlock(const Cta &c) {
    std::string s = "deadlock (divergent warp, barrier or mbarrier): no thread can run;";
    for (size_t w = 0; w < c.warps.size(); ++w) {
        const Warp &wp = c.warps[w];
        if (wp.op == Op::kNone) continue;
        uint32_t at_barrier = 0, exited = 0;
        for (int lane = 0; lane < 32; ++lane) {
            const Status st = c.threads[32 * w + lane].status;
            at_barrier |= uint32_t(st == Status::kAtBarrier) << lane;
            exited |= uint32_t(st == Status::kExited) << lane;
        }
        const uint32_t missing = wp.mask & ~wp.arrived;
        char lanes[128], barrier[128], gone[128];
        warp_lanes(lanes, sizeof lanes, wp.arrived);
        warp_lanes(barrier, sizeof barrier, missing & at_barrier);
        warp_lanes(gone, sizeof gone, missing & exited);
        char buf[640];
        snprintf(buf, sizeof buf, " warp %zu: lanes %s wait at %s (mask 0x%08x) for lanes at __syncthreads {%s} and exited {%s};",
                 w, lanes, op_name(wp.op), wp.mask, barrier, gone);
        s += buf;
    }
    s += describe_sm90_waits(c);
    char buf[128];
    snprintf(buf, sizeof buf, " %d thread(s) at __syncthreads, %d exited", c.at_barrier, c.exited);
    return s + buf;
}

static void run_cta(Launch &l, Cta &c, Stacks &stacks, uint3 block_idx, uint64_t linear_block) {
    const uint32_t n = l.block.x * l.block.y * l.block.z;
    c.launch = &l;
    c.linear_block = linear_block;
    c.block_idx = block_idx;
    c.block_dim = l.block;
    c.grid_dim = l.grid;
    c.rng.seed(l.options.seed * 0x9e3779b97f4a7c15ull + linear_block);
    c.threads.resize(n);
    c.warps.assign((n + 31) / 32, Warp{Op::kNone, 0, 0, 0, 0});
    if (kRacecheck) c.shadow.assign(c.smem_bytes, ByteShadow{kNoAccess, {kNoAccess, kNoAccess}, false, 0});
    c.copy_phases.assign(c.warps.size(), {});
    c.victim_warp = int(c.rng() % c.warps.size());
    memset(c.smem, kPoison, c.smem_bytes);
    for (StaticSite &s : c.statics) free(s.data);
    c.statics.clear();
    c.static_bytes = 0;
    c.at_barrier = c.exited = 0;
    c.failed = false;
    c.clocks = false;
    c.tma_clock = 0;
    c.mbarriers.clear();
    c.bulk.clear();
    for (NamedBarrier &b : c.named) b = NamedBarrier{0, 0, {}, {}};
    c.warpgroups.assign((c.warps.size() + 3) / 4, Warpgroup{0, 0, 0});
    c.wgmma_groups.assign(c.warps.size(), {});
    c.counters = MaskattnCpuCounters{};
    c.counters.ctas = 1;
    c.ready.clear();
    for (uint32_t i = 0; i < n; ++i) {
        Thread &t = c.threads[i];
        t.thread_idx = uint3_of(i % l.block.x, i / l.block.x % l.block.y, i / (l.block.x * l.block.y));
        t.linear = int(i);
        t.warp = int(i / 32);
        t.lane = int(i % 32);
        t.cta = &c;
        t.owner = &c;
        t.groups.clear();
        t.cp_seq = 0;
        t.vc.clear();
        t.proxy_fences = 0;
        t.wgmma_fenced = false;
        t.group_arg = nullptr;
        t.waits_on = 0;
        t.wait_parity = 0;
        t.named_barrier = -1;
        unsigned char *stack = stacks.get(i);
        if (stack == nullptr) {
            record_error(l, &c, nullptr, "out of memory for fiber stacks");
            return;
        }
#if defined(MASKATTN_CPU_ASAN)
        // The stack's last fiber never returned (it was left at a yield), so its frames'
        // redzones are still poisoned: a new fiber's frames there would hit them.
        __asan_unpoison_memory_region(stack + 4096, stacks.size - 4096);
#endif
        make_context(t.context, stack + 4096, stacks.size - 4096, &thread_main, &t);
        make_ready(c, int(i));
    }
    const bool early = l.options.early_landing != 0;
    while (!c.failed) {
        // A bulk copy in flight lands at a moment the schedule picks, at the latest
        // when no thread can run without it.
        if (c.exited == int(n) && !c.bulk.empty()) {
            char msg[128];
            snprintf(msg, sizeof msg, "every thread exited with %zu bulk copies in flight (their shared memory is gone)",
                     c.bulk.size());
            record_error(l, &c, nullptr, msg);
            break;
        }
        if (!c.bulk.empty() && (c.ready.empty() || c.rng() % 4 == 0)) {
            land_bulk(c, size_t(c.rng() % c.bulk.size()));
            continue;
        }
        if (c.ready.empty()) {
            if (c.exited == int(n)) break;
            record_error(l, &c, nullptr, describe_deadlock(c).c_str());
            break;
        }
        if (early && c.rng() % 8 == 0) land_one_early(c);
        Thread &t = c.threads[pick(c)];
        tls_thread = &t;
#if defined(MASKATTN_CPU_ASAN)
        void *fake = nullptr;
        unsigned char *stack = stacks.get(size_t(t.linear));
        __sanitizer_start_switch_fiber(&fake, stack + 4096, stacks.size - 4096);
#endif
        switch_context(c.scheduler, t.context);
#if defined(MASKATTN_CPU_ASAN)
        __sanitizer_finish_switch_fiber(fake, &c.scheduler_stack_bottom, &c.scheduler_stack_size);
#endif
        tls_thread = nullptr;
        if (c.failed && !l.failed) l.failed = true;
    }
    for (StaticSite &s : c.statics) free(s.data);
    c.statics.clear();
    std::lock_guard<std::mutex> lock(l.mutex);
    MaskattnCpuCounters &a = l.counters;
    const MaskattnCpuCounters &b = c.counters;
    a.ctas += b.ctas;
    a.mma += b.mma;
    a.ldmatrix += b.ldmatrix;
    a.ldmatrix_conflicts += b.ldmatrix_conflicts;
    a.cp_async += b.cp_async;
    a.cp_async_zero_fill += b.cp_async_zero_fill;
    a.bytes_global_to_shared += b.bytes_global_to_shared;
    a.cp_async_conflicts += b.cp_async_conflicts;
    a.barriers += b.barriers;
    a.warp_syncs += b.warp_syncs;
    for (int i = 0; i < 3; ++i) a.key_tiles[i] += b.key_tiles[i];
    a.races += b.races;
    a.wgmma += b.wgmma;
    a.tma_loads += b.tma_loads;
    a.bytes_tma += b.bytes_tma;
}

static void worker(Launch &l, std::atomic<uint64_t> &next) {
    Stacks stacks;
#if defined(MASKATTN_CPU_ASAN)
    stacks.size = size_t(1) << 20;
#else
    stacks.size = size_t(256) << 10;
#endif
    Cta c;
    // Exactly the launch's bytes, so that AddressSanitizer sees any access past them.
    c.smem_bytes = l.dynamic_smem;
    void *smem = nullptr;
    if (posix_memalign(&smem, 128, std::max<uint32_t>(l.dynamic_smem, 1)) != 0) {
        record_error(l, nullptr, nullptr, "out of memory for shared memory");
        return;
    }
    c.smem = static_cast<unsigned char *>(smem);
#if defined(MASKATTN_CPU_ASAN)
    c.scheduler_stack_bottom = nullptr;
    c.scheduler_stack_size = 0;
#endif
    const uint64_t total = uint64_t(l.grid.x) * l.grid.y * l.grid.z;
    for (uint64_t b; !l.failed && (b = next.fetch_add(1)) < total;) {
        const uint3 idx = uint3_of(uint32_t(b % l.grid.x), uint32_t(b / l.grid.x % l.grid.y),
                                     uint32_t(b / (uint64_t(l.grid.x) * l.grid.y)));
        run_cta(l, c, stacks, idx, b);
    }
    free(c.smem);
}

}  // namespace cpu
}  // namespace maskattn

using namespace maskattn::cpu;

// Defined in the kernels' translation unit (build.rs): referencing it keeps that
// object, and with it the kernels' registrations, in the link.
extern "C" void maskattn_cpu_kernels_anchor();

extern "C" int32_t maskattn_cpu_check_mode(void) {
#if defined(MASKATTN_CPU_RACECHECK)
    return 1;
#elif defined(MASKATTN_CPU_ASAN)
    return 2;
#else
    return 0;
#endif
}

extern "C" int32_t maskattn_cpu_launch(const char *name, const uint32_t *grid, const uint32_t *block,
                                       uint32_t dynamic_smem, const void *params, uint64_t params_bytes,
                                       const MaskattnCpuOptions *options, MaskattnCpuCounters *counters, char *err,
                                       uint64_t err_bytes) {
    auto error = [&](const std::string &msg) {
        if (err_bytes > 0) snprintf(err, err_bytes, "%s", msg.c_str());
        return int32_t(1);
    };
    maskattn_cpu_kernels_anchor();
    const auto it = registry().find(name);
    if (it == registry().end()) return error(std::string("no kernel named ") + name);
    Launch l;
    l.kernel = name;
    l.entry = &it->second;
    if (params_bytes != l.entry->args_bytes)
        return error(l.kernel + ": params of " + std::to_string(params_bytes) + " bytes, the kernel takes " +
                     std::to_string(l.entry->args_bytes));
    l.args = static_cast<const unsigned char *>(params);
    l.grid = uint3_of(grid[0], grid[1], grid[2]);
    l.block = uint3_of(block[0], block[1], block[2]);
    l.dynamic_smem = dynamic_smem;
    l.options = *options;
    l.buffers.assign(options->buffers, options->buffers + options->n_buffers);
    const uint64_t threads = uint64_t(l.block.x) * l.block.y * l.block.z;
    if (l.grid.x == 0 || l.grid.y == 0 || l.grid.z == 0 || l.grid.y > 65535 || l.grid.z > 65535 ||
        l.grid.x > 0x7fffffffu)
        return error(l.kernel + ": invalid grid (" + std::to_string(l.grid.x) + ", " + std::to_string(l.grid.y) +
                     ", " + std::to_string(l.grid.z) + ")");
    if (threads == 0 || threads > 1024 || l.block.z > 64)
        return error(l.kernel + ": invalid block of " + std::to_string(threads) + " threads");
    if (dynamic_smem > options->max_dynamic_smem)
        return error(l.kernel + ": " + std::to_string(dynamic_smem) + " bytes of dynamic shared memory exceed the " +
                     std::to_string(options->max_dynamic_smem) + " of the budget");
    const uint64_t total = uint64_t(l.grid.x) * l.grid.y * l.grid.z;
    int workers = options->workers > 0 ? options->workers : int(std::thread::hardware_concurrency());
    workers = int(std::max<uint64_t>(1, std::min<uint64_t>(uint64_t(std::max(workers, 1)), total)));
    std::atomic<uint64_t> next{0};
    std::vector<std::thread> pool;
    for (int i = 1; i < workers; ++i) pool.emplace_back([&] { worker(l, next); });
    worker(l, next);
    for (std::thread &t : pool) t.join();
    if (counters != nullptr) *counters = l.counters;
    if (l.failed) return error(l.error.empty() ? l.kernel + ": failed" : l.error);
    return 0;
}
