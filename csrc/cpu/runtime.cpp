// The CPU backend's runtime: launches, CTAs on OS threads, CUDA threads as fibers,
// warp collectives as rendezvous, barriers, cp.async with its group semantics,
// shared-memory bounds and poison, counters. See csrc/cpu/runtime.h.
//
// Fibers are a context switch of our own (x86-64: callee-saved registers, MXCSR
// and the x87 control word; elsewhere ucontext). Boost.Context would do the same,
// but a switch between fibers of one CTA happens 64 times per mma instruction, so
// it must cost nanoseconds (glibc's swapcontext makes a signal-mask system call
// each time), and a dozen lines of assembly need no extra package on CI.
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <map>
#include <memory>
#include <unordered_map>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "cpu/abi.h"
#include "cpu/runtime.h"
#include "params.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define MASKATTN_CPU_ASAN 1
#endif

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

#if defined(MASKATTN_CPU_RACECHECK)
constexpr bool kRacecheck = true;
#else
constexpr bool kRacecheck = false;
#endif

namespace maskattn {
namespace cpu {

__thread ThreadView *tls_thread = nullptr;

static uint3 uint3_of(uint32_t x, uint32_t y, uint32_t z) {
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

struct Context {
    void *sp = nullptr;
};

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
struct Context {
    ucontext_t uc;
};

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

struct KernelEntry {
    void (*fn)();
    Trampoline trampoline;
    size_t args_bytes;
};

static std::map<std::string, KernelEntry> &registry() {
    static std::map<std::string, KernelEntry> r;
    return r;
}

void register_kernel(const char *name, void (*fn)(), Trampoline trampoline, size_t args_bytes) {
    registry()[name] = KernelEntry{fn, trampoline, args_bytes};
}

// ---------------------------------------------------------------------------------
// Launch and CTA state.

constexpr uint8_t kPoison = 0xff;  // NaN in f16, bf16 and f32

// Racecheck of global memory: which CTA wrote each byte of a 4 KB page in this
// launch. A page written by one CTA only keeps a bitmap; the first write by a
// second CTA turns it into one owner per byte.
struct GlobalPage {
    uint64_t owner;             // linear block id of the first writer
    uint64_t written[4096 / 64];  // bytes the owner wrote
    std::unique_ptr<uint64_t[]> owners;  // per byte, linear block id + 1 (0: none)
};

struct Launch {
    std::string kernel;
    const KernelEntry *entry;
    const unsigned char *args;
    uint3 grid, block;
    uint32_t dynamic_smem;
    MaskattnCpuOptions options;
    std::vector<MaskattnCpuBuffer> buffers;
    std::atomic<bool> failed{false};
    std::mutex mutex;
    std::string error;
    MaskattnCpuCounters counters{};
    std::mutex global_mutex;
    std::unordered_map<uint64_t, GlobalPage> global_pages;  // racecheck builds
};

enum class Status : uint8_t { kReady, kAtWarp, kAtBarrier, kExited };

struct Copy {
    uint32_t dst;
    const unsigned char *src;  // null: zero-fill
};

struct Cta;

struct Thread : ThreadView {
    Context context;
    Status status;
    Cta *owner;
    std::vector<std::vector<Copy>> groups;  // committed groups, oldest first, then the open one
    uint32_t cp_seq;                        // cp.async instructions issued, for the bank model
};

struct Warp {
    Op op;
    uint32_t mask, arrived;
    uint32_t syncs;        // completed __syncwarp: orders the shared accesses of its lanes
    uint32_t collectives;  // completed collectives of any kind
};

// Racecheck: per byte of shared memory, the last write and the last two readers
// since, each with the barrier count of its CTA and the __syncwarp count of its
// warp at the time. Two accesses of different threads are ordered when a
// __syncthreads lies between them, or a __syncwarp if both threads are in one warp.
// An access made by a warp collective itself (ldmatrix) is complete when the
// collective is, so it is also ordered before what its warp's lanes do after it.
struct Access {
    uint32_t barriers;
    uint32_t warp_syncs;
    int32_t thread;       // -1: none
    uint32_t collective;  // the warp's collective count, kPlain for a thread's own access
};
constexpr uint32_t kPlain = 0xffffffffu;

struct ByteShadow {
    Access write;
    Access read[2];
    bool pending;  // the write is a cp.async that has not landed
};

// The k-th cp.async of every lane of a warp, gathered to count the bank conflicts
// of the warp-wide store it is on the GPU.
struct CopyPhase {
    uint32_t seq;
    uint32_t issued;
    uint32_t dst[32];
};

struct StaticSite {
    const void *site;
    unsigned char *data;
    uint32_t offset, bytes;
    std::vector<ByteShadow> shadow;
};

struct Cta : CtaView {
    Launch *launch;
    uint64_t linear_block;
    std::vector<Thread> threads;
    std::vector<Warp> warps;
    std::vector<std::vector<CopyPhase>> copy_phases;
    unsigned char *smem;
    uint32_t smem_bytes;
    std::vector<StaticSite> statics;
    uint32_t static_bytes;
    int at_barrier, exited;
    bool failed;
    // The runnable threads; the schedule picks among them.
    std::vector<int> ready;
    int victim_warp;
    std::mt19937_64 rng;
    Context scheduler;
    MaskattnCpuCounters counters;
    std::vector<ByteShadow> shadow;  // racecheck builds: one per byte of smem
#if defined(MASKATTN_CPU_ASAN)
    const void *scheduler_stack_bottom;
    size_t scheduler_stack_size;
#endif
};

static Cta &cta_of_self() { return *static_cast<Thread *>(tls_thread)->owner; }

static void warp_lanes(char *buf, size_t n, uint32_t mask) {
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

static const char *op_name(Op op) {
    switch (op) {
        case Op::kNone: return "nothing";
        case Op::kSyncWarp: return "__syncwarp";
        case Op::kShflXor: return "__shfl_xor_sync";
        case Op::kVoteAny: return "__any_sync";
        case Op::kLdmatrix: return "ldmatrix.x4";
        case Op::kLdmatrixTrans: return "ldmatrix.x4.trans";
        case Op::kMmaF16: return "mma.m16n8k16.f16";
        case Op::kMmaBf16: return "mma.m16n8k16.bf16";
    }
    return "?";
}

static void record_error(Launch &l, const Cta *cta, const Thread *t, const char *msg) {
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

// Leaves the current fiber for the scheduler; it is resumed once made ready again.
static void yield(Thread &t) {
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

static void make_ready(Cta &c, int tid) {
    c.threads[tid].status = Status::kReady;
    c.ready.push_back(tid);
}

// A lane about to wait at a barrier or to exit must not be expected at its warp's
// pending collective.
static void check_not_awaited(Thread &t, const char *doing) {
    const Warp &w = t.owner->warps[t.warp];
    if (w.op != Op::kNone && (w.mask >> t.lane & 1)) {
        char lanes[128];
        warp_lanes(lanes, sizeof lanes, w.arrived);
        fail("divergence: lanes %s wait at %s (mask 0x%08x) while this lane %s", lanes, op_name(w.op), w.mask, doing);
    }
}

// ---------------------------------------------------------------------------------
// Shared memory.

unsigned char *dynamic_shared() {
    Cta &c = cta_of_self();
    return c.smem;
}

void *static_shared(const void *site, size_t bytes, size_t align) {
    Cta &c = cta_of_self();
    for (const StaticSite &s : c.statics)
        if (s.site == site) return s.data;
    const uint32_t offset = uint32_t((c.static_bytes + align - 1) / align * align);
    if (offset + bytes > 48 * 1024) fail("static shared memory exceeds 48 KB");
    void *mem = nullptr;
    // Exactly `bytes`, so that AddressSanitizer sees any access past them.
    if (posix_memalign(&mem, std::max<size_t>(align, 16), bytes) != 0) fail("out of memory for static shared memory");
    unsigned char *data = static_cast<unsigned char *>(mem);
    memset(data, kPoison, bytes);
    c.statics.push_back(StaticSite{site, data, offset, uint32_t(bytes), {}});
    if (kRacecheck) c.statics.back().shadow.assign(bytes, ByteShadow{{0, 0, -1, kPlain}, {{0, 0, -1, kPlain}, {0, 0, -1, kPlain}}, false});
    c.static_bytes = offset + uint32_t(bytes);
    return data;
}

uint32_t to_shared(const void *p) {
    Cta &c = cta_of_self();
    const unsigned char *b = static_cast<const unsigned char *>(p);
    if (b >= c.smem && b <= c.smem + c.smem_bytes) return uint32_t(b - c.smem);
    for (const StaticSite &s : c.statics)
        if (b >= s.data && b <= s.data + s.bytes) return kStaticBase + s.offset + uint32_t(b - s.data);
    fail("__cvta_generic_to_shared of %p, which is not in the CTA's shared memory", p);
}

unsigned char *shared_at(uint32_t addr, uint32_t bytes, uint32_t align, const char *what) {
    Cta &c = cta_of_self();
    if (addr % align != 0) fail("%s: shared address 0x%x is not %u-byte aligned", what, addr, align);
    if (addr < kStaticBase) {
        if (uint64_t(addr) + bytes <= c.smem_bytes) return c.smem + addr;
        fail("%s: shared bytes [0x%x, 0x%x) are past the %u bytes of dynamic shared memory", what, addr, addr + bytes,
             c.smem_bytes);
    }
    const uint32_t off = addr - kStaticBase;
    for (const StaticSite &s : c.statics)
        if (off >= s.offset && uint64_t(off) + bytes <= uint64_t(s.offset) + s.bytes) return s.data + (off - s.offset);
    fail("%s: shared bytes [0x%x, 0x%x) are outside every static shared variable", what, addr, addr + bytes);
}

// Extra wavefronts of one phase of 16-byte accesses: rows at distinct addresses
// that fall on the same four banks are served one after the other.
static uint64_t phase_conflicts(const uint32_t *addr, int n) {
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
// Racecheck (MASKATTN_CPU_RACECHECK builds): every shared access of the kernels'
// plain C++ reaches race_access through the ThreadSanitizer instrumentation hooks
// below, and the primitives call it directly, so a race is found whatever order the
// schedule happened to run the threads in.

static ByteShadow *shadow_of(Cta &c, const unsigned char *p) {
    if (p >= c.smem && p < c.smem + c.smem_bytes) return &c.shadow[size_t(p - c.smem)];
    for (StaticSite &s : c.statics)
        if (p >= s.data && p < s.data + s.bytes) return &s.shadow[size_t(p - s.data)];
    return nullptr;
}

static Access now(const Cta &c, const Thread &t, bool by_collective) {
    const Warp &w = c.warps[t.warp];
    return Access{uint32_t(c.counters.barriers), w.syncs, t.linear, by_collective ? w.collectives : kPlain};
}

static bool ordered(const Cta &c, const Access &a, const Thread &t) {
    if (a.thread < 0 || a.thread == t.linear) return true;
    if (c.counters.barriers > a.barriers) return true;
    if (a.thread / 32 != t.warp) return false;
    const Warp &w = c.warps[t.warp];
    return w.syncs > a.warp_syncs || (a.collective != kPlain && w.collectives > a.collective);
}

[[noreturn]] static void report_race(Cta &c, const Thread &t, const unsigned char *p, const Access &other,
                                     const char *other_kind, bool write) {
    ++c.counters.races;
    fail("race on shared byte 0x%x: this thread %s it, thread %d (warp %d) %s it with no barrier between",
         to_shared(p), write ? "writes" : "reads", other.thread, other.thread / 32, other_kind);
}

static bool in_registered_buffer(const Launch &l, const void *p, uint64_t bytes);

// Global memory: nothing orders the CTAs of one launch but atomics, so plain stores
// of two CTAs to one byte race (a read-add-write by both loses an update). Only
// writes are tracked; atomics (ThreadSanitizer's atomic hooks) are exempt.
static void global_write(Thread &t, const unsigned char *p, size_t n) {
    Cta &c = *t.owner;
    Launch &l = *c.launch;
    if (!in_registered_buffer(l, p, n)) return;  // the stack or host data
    uint64_t other = 0;
    const unsigned char *at = nullptr;
    {
        std::lock_guard<std::mutex> lock(l.global_mutex);
        for (size_t i = 0; i < n && at == nullptr; ++i) {
            const uint64_t a = reinterpret_cast<uint64_t>(p + i), off = a % 4096;
            auto [it, fresh] = l.global_pages.try_emplace(a / 4096);
            GlobalPage &pg = it->second;
            if (fresh) pg.owner = c.linear_block;
            if (pg.owners == nullptr && pg.owner == c.linear_block) {
                pg.written[off / 64] |= uint64_t(1) << (off % 64);
                continue;
            }
            if (pg.owners == nullptr) {
                pg.owners.reset(new uint64_t[4096]());
                for (uint64_t b = 0; b < 4096; ++b)
                    if (pg.written[b / 64] >> (b % 64) & 1) pg.owners[b] = pg.owner + 1;
            }
            uint64_t &o = pg.owners[off];
            if (o != 0 && o != c.linear_block + 1) {
                other = o - 1;
                at = p + i;
            }
            o = c.linear_block + 1;
        }
    }
    // fail() does not return: the lock is released before it.
    if (at != nullptr) {
        ++c.counters.races;
        fail("race on global memory at %p: this CTA (linear block %llu) writes it, block %llu wrote it in the "
             "same launch; no order exists between CTAs but atomics",
             static_cast<const void *>(at), static_cast<unsigned long long>(c.linear_block),
             static_cast<unsigned long long>(other));
    }
}

static void race_access(Thread &t, const unsigned char *p, size_t n, bool write, bool by_collective = false) {
    Cta &c = *t.owner;
    for (size_t i = 0; i < n; ++i) {
        ByteShadow *b = shadow_of(c, p + i);
        if (b == nullptr) {
            if (write && !by_collective) global_write(t, p + i, n - i);
            return;  // not shared memory
        }
        if (b->pending)
            fail("shared byte 0x%x is the destination of a cp.async of thread %d that has not landed (no "
                 "cp.async.wait_group before this %s)",
                 to_shared(p + i), b->write.thread, write ? "write" : "read");
        if (!ordered(c, b->write, t)) report_race(c, t, p + i, b->write, "wrote", write);
        const Access me = now(c, t, by_collective);
        if (write) {
            for (const Access &r : b->read)
                if (!ordered(c, r, t)) report_race(c, t, p + i, r, "read", true);
            b->write = me;
            b->read[0] = b->read[1] = Access{0, 0, -1, kPlain};
        } else if (b->read[0].thread == t.linear) {
            b->read[0] = me;
        } else {
            b->read[1] = b->read[0];
            b->read[0] = me;
        }
    }
}

// A cp.async writes its destination at some moment between issue and landing: a
// write at issue (racing with unordered earlier accesses), then pending until it lands.
static void race_cp_async_issue(Thread &t, const unsigned char *dst) {
    if (!kRacecheck) return;
    race_access(t, dst, 16, true);
    Cta &c = *t.owner;
    for (int i = 0; i < 16; ++i) shadow_of(c, dst + i)->pending = true;
}

static void race_cp_async_land(Thread &issuer, const unsigned char *dst) {
    if (!kRacecheck) return;
    Cta &c = *issuer.owner;
    for (int i = 0; i < 16; ++i) {
        ByteShadow *b = shadow_of(c, dst + i);
        b->pending = false;
        b->write = now(c, issuer, false);
    }
}

// ---------------------------------------------------------------------------------
// cp.async.

static bool in_registered_buffer(const Launch &l, const void *p, uint64_t bytes) {
    const uint64_t a = reinterpret_cast<uint64_t>(p);
    for (const MaskattnCpuBuffer &b : l.buffers)
        if (a >= b.addr && a + bytes <= b.addr + b.bytes) return true;
    return false;
}

static void land(Thread &issuer, const Copy &copy) {
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
static void land_one_early(Cta &c) {
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

static float half_to_float(uint16_t h) {
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

static float bf16_to_float(uint16_t h) {
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

static void execute(Cta &c, int w, Op op, uint32_t mask) {
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
    const bool aligned = op == Op::kLdmatrix || op == Op::kLdmatrixTrans || op == Op::kMmaF16 || op == Op::kMmaBf16;
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
    std::string s = "deadlock (divergent warp or barrier): no thread can run;";
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
    if (kRacecheck) c.shadow.assign(c.smem_bytes, ByteShadow{{0, 0, -1, kPlain}, {{0, 0, -1, kPlain}, {0, 0, -1, kPlain}}, false});
    c.copy_phases.assign(c.warps.size(), {});
    c.victim_warp = int(c.rng() % c.warps.size());
    memset(c.smem, kPoison, c.smem_bytes);
    for (StaticSite &s : c.statics) free(s.data);
    c.statics.clear();
    c.static_bytes = 0;
    c.at_barrier = c.exited = 0;
    c.failed = false;
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

#if defined(MASKATTN_CPU_RACECHECK)
// The ThreadSanitizer instrumentation of the kernels' translation unit (compiled
// with -fsanitize=thread, linked without ThreadSanitizer's runtime) calls these for
// every load and store: shared-memory ones go to the race detector, stores to the
// launch's global buffers to the cross-CTA check (global_write), the rest (the
// stack, host data, global loads) are ignored.
static inline void tsan_access(void *p, size_t n, bool write) {
    if (tls_thread == nullptr) return;
    Thread &t = *static_cast<Thread *>(tls_thread);
    race_access(t, static_cast<const unsigned char *>(p), n, write);
}

extern "C" {
void __tsan_init() {}
void __tsan_func_entry(void *) {}
void __tsan_func_exit() {}
void __tsan_read1(void *p) { tsan_access(p, 1, false); }
void __tsan_read2(void *p) { tsan_access(p, 2, false); }
void __tsan_read4(void *p) { tsan_access(p, 4, false); }
void __tsan_read8(void *p) { tsan_access(p, 8, false); }
void __tsan_read16(void *p) { tsan_access(p, 16, false); }
void __tsan_write1(void *p) { tsan_access(p, 1, true); }
void __tsan_write2(void *p) { tsan_access(p, 2, true); }
void __tsan_write4(void *p) { tsan_access(p, 4, true); }
void __tsan_write8(void *p) { tsan_access(p, 8, true); }
void __tsan_write16(void *p) { tsan_access(p, 16, true); }
void __tsan_unaligned_read2(void *p) { tsan_access(p, 2, false); }
void __tsan_unaligned_read4(void *p) { tsan_access(p, 4, false); }
void __tsan_unaligned_read8(void *p) { tsan_access(p, 8, false); }
void __tsan_unaligned_read16(void *p) { tsan_access(p, 16, false); }
void __tsan_unaligned_write2(void *p) { tsan_access(p, 2, true); }
void __tsan_unaligned_write4(void *p) { tsan_access(p, 4, true); }
void __tsan_unaligned_write8(void *p) { tsan_access(p, 8, true); }
void __tsan_unaligned_write16(void *p) { tsan_access(p, 16, true); }
void __tsan_read_range(void *p, unsigned long n) { tsan_access(p, n, false); }
void __tsan_write_range(void *p, unsigned long n) { tsan_access(p, n, true); }
// The dQ accumulation's float atomics (global memory): real atomics, nothing to check.
int __tsan_atomic32_load(const volatile int *a, int) { return __atomic_load_n(a, __ATOMIC_SEQ_CST); }
int __tsan_atomic32_compare_exchange_weak(volatile int *a, int *expected, int desired, int, int) {
    return __atomic_compare_exchange_n(a, expected, desired, true, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
}
}
#endif

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
