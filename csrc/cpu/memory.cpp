// The CPU backend's memory: shared memory (dynamic and static, exactly the launch's
// size, poison at the start of every CTA), bounds and alignment of every primitive's
// address, and racecheck (shared memory within a CTA, global stores across CTAs).
#include "cpu/internal.h"

namespace maskattn {
namespace cpu {

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
    if (kRacecheck) c.statics.back().shadow.assign(bytes, ByteShadow{kNoAccess, {kNoAccess, kNoAccess}, false, 0});
    c.static_bytes = offset + uint32_t(bytes);
    return data;
}

uint32_t to_shared(const void *p) { return shared_address_of(cta_of_self(), p); }

uint32_t shared_address_of(Cta &c, const void *p) {
    const unsigned char *b = static_cast<const unsigned char *>(p);
    if (b >= c.smem && b <= c.smem + c.smem_bytes) return uint32_t(b - c.smem);
    for (const StaticSite &s : c.statics)
        if (b >= s.data && b <= s.data + s.bytes) return kStaticBase + s.offset + uint32_t(b - s.data);
    fail("__cvta_generic_to_shared of %p, which is not in the CTA's shared memory", p);
}

unsigned char *shared_ptr(Cta &c, uint32_t addr, uint32_t bytes) {
    if (addr < kStaticBase) return uint64_t(addr) + bytes <= c.smem_bytes ? c.smem + addr : nullptr;
    const uint32_t off = addr - kStaticBase;
    for (const StaticSite &s : c.statics)
        if (off >= s.offset && uint64_t(off) + bytes <= uint64_t(s.offset) + s.bytes) return s.data + (off - s.offset);
    return nullptr;
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

// ---------------------------------------------------------------------------------
// Racecheck (MASKATTN_CPU_RACECHECK builds): every shared access of the kernels'
// plain C++ reaches race_access through the ThreadSanitizer instrumentation hooks
// below, and the primitives call it directly, so a race is found whatever order the
// schedule happened to run the threads in.

ByteShadow *shadow_of(Cta &c, const unsigned char *p) {
    if (p >= c.smem && p < c.smem + c.smem_bytes) return &c.shadow[size_t(p - c.smem)];
    for (StaticSite &s : c.statics)
        if (p >= s.data && p < s.data + s.bytes) return &s.shadow[size_t(p - s.data)];
    return nullptr;
}

static Access now(const Cta &c, const Thread &t, bool by_collective) {
    const Warp &w = c.warps[t.warp];
    return Access{uint32_t(c.counters.barriers), w.syncs, t.linear, by_collective ? w.collectives : kPlain,
                  c.clocks ? t.vc[size_t(t.linear)] : kNoEpoch, t.proxy_fences};
}

static bool ordered(const Cta &c, const Access &a, const Thread &t) {
    if (a.thread < 0 || a.thread == t.linear) return true;
    if (c.counters.barriers > a.barriers) return true;
    if (c.clocks && a.epoch != kNoEpoch && t.vc[size_t(a.thread)] >= a.epoch) return true;
    if (a.thread >= int32_t(c.threads.size())) return false;  // the TMA unit: only an mbarrier orders it
    if (a.thread / 32 != t.warp) return false;
    const Warp &w = c.warps[t.warp];
    return w.syncs > a.warp_syncs || (a.collective != kPlain && w.collectives > a.collective);
}

[[noreturn]] static void report_race(Cta &c, const Thread &t, const unsigned char *p, const Access &other,
                                     const char *other_kind, bool write) {
    ++c.counters.races;
    if (other.thread == int32_t(c.threads.size()))
        fail("race on shared byte 0x%x: this thread %s it, a TMA bulk copy %s it, and no mbarrier wait orders "
             "the copy's completion before this access",
             to_shared(p), write ? "writes" : "reads", other_kind);
    fail("race on shared byte 0x%x: this thread %s it, thread %d (warp %d) %s it with no barrier between",
         to_shared(p), write ? "writes" : "reads", other.thread, other.thread / 32, other_kind);
}

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

void race_access(Thread &t, const unsigned char *p, size_t n, bool write, bool by_collective) {
    Cta &c = *t.owner;
    for (size_t i = 0; i < n; ++i) {
        ByteShadow *b = shadow_of(c, p + i);
        if (b == nullptr) {
            if (write && !by_collective) global_write(t, p + i, n - i);
            return;  // not shared memory
        }
        if (b->pending && b->write.thread == int32_t(c.threads.size()))
            fail("shared byte 0x%x is the destination of a bulk copy whose mbarrier phase has not completed (no "
                 "mbarrier wait before this %s)",
                 to_shared(p + i), write ? "write" : "read");
        if (b->pending)
            fail("shared byte 0x%x is the destination of a cp.async of thread %d that has not landed (no "
                 "cp.async.wait_group before this %s)",
                 to_shared(p + i), b->write.thread, write ? "write" : "read");
        if (write && b->async_readers > 0)
            fail("shared byte 0x%x is written while a wgmma reads it (issued, not yet retired by "
                 "wgmma.wait_group)",
                 to_shared(p + i));
        if (!ordered(c, b->write, t)) report_race(c, t, p + i, b->write, "wrote", write);
        const Access me = now(c, t, by_collective);
        if (write) {
            for (const Access &r : b->read)
                if (!ordered(c, r, t)) report_race(c, t, p + i, r, "read", true);
            b->write = me;
            b->read[0] = b->read[1] = kNoAccess;
        } else if (b->read[0].thread == t.linear) {
            b->read[0] = me;
        } else {
            b->read[1] = b->read[0];
            b->read[0] = me;
        }
    }
}

void start_clocks(Cta &c) {
    if (!kRacecheck || c.clocks) return;
    c.clocks = true;
    const size_t slots = c.threads.size() + 1;
    for (Thread &t : c.threads) {
        t.vc.assign(slots, 0);
        t.vc[size_t(t.linear)] = 1;
    }
    c.tma_clock = 0;
}

void clock_release(Thread &t, VectorClock &into) {
    if (!t.owner->clocks) return;
    if (into.size() < t.vc.size()) into.resize(t.vc.size(), 0);
    for (size_t i = 0; i < t.vc.size(); ++i) into[i] = std::max(into[i], t.vc[i]);
    ++t.vc[size_t(t.linear)];
}

void clock_acquire(Thread &t, const VectorClock &from) {
    if (!t.owner->clocks) return;
    for (size_t i = 0; i < from.size() && i < t.vc.size(); ++i) t.vc[i] = std::max(t.vc[i], from[i]);
}

void clock_join(Cta &c, const int *threads, int n) {
    if (!c.clocks) return;
    VectorClock joined(c.threads.size() + 1, 0);
    for (int i = 0; i < n; ++i) clock_release(c.threads[size_t(threads[i])], joined);
    for (int i = 0; i < n; ++i) clock_acquire(c.threads[size_t(threads[i])], joined);
}

void race_bulk_issue(Thread &t, const unsigned char *dst, size_t n, uint32_t epoch) {
    if (!kRacecheck) return;
    // Checked as a write of the issuer (what it knows orders the copy), recorded as the
    // TMA unit's, pending until its mbarrier phase completes.
    race_access(t, dst, n, true);
    Cta &c = *t.owner;
    const Access tma{0xffffffffu, 0, int32_t(c.threads.size()), kPlain, epoch, 0};
    for (size_t i = 0; i < n; ++i) {
        ByteShadow *b = shadow_of(c, dst + i);
        b->write = tma;
        b->pending = true;
    }
}

const unsigned char *race_bulk_land(Cta &c, const unsigned char *dst, size_t n, uint32_t epoch) {
    if (!kRacecheck) return nullptr;
    // Written by the TMA unit: ordered before a thread only through an mbarrier the
    // copy completed on (never by __syncthreads: barriers = ~0).
    const Access tma{0xffffffffu, 0, int32_t(c.threads.size()), kPlain, epoch, 0};
    for (size_t i = 0; i < n; ++i) {
        ByteShadow *b = shadow_of(c, dst + i);
        if (b->async_readers > 0) return dst + i;
        b->pending = false;
        b->write = tma;
        b->read[0] = b->read[1] = kNoAccess;
    }
    return nullptr;
}

void race_async_read_begin(Cta &c, const unsigned char *p, size_t n) {
    if (!kRacecheck) return;
    for (size_t i = 0; i < n; ++i) ++shadow_of(c, p + i)->async_readers;
}

void race_async_read_end(Thread &t, const unsigned char *p, size_t n) {
    if (!kRacecheck) return;
    Cta &c = *t.owner;
    for (size_t i = 0; i < n; ++i) --shadow_of(c, p + i)->async_readers;
    race_access(t, p, n, false, true);
}

void check_proxy_fence(Thread &t, const unsigned char *p, size_t n, const char *what) {
    if (!kRacecheck) return;
    Cta &c = *t.owner;
    for (size_t i = 0; i < n; ++i) {
        const ByteShadow *b = shadow_of(c, p + i);
        const Access &w = b->write;
        if (w.thread < 0 || w.thread >= int32_t(c.threads.size())) continue;  // none, or the TMA unit (async proxy)
        if (c.threads[size_t(w.thread)].proxy_fences == w.proxy_fences)
            fail("%s accesses shared byte 0x%x through the async proxy, but thread %d wrote it through the "
                 "generic proxy and has executed no fence.proxy.async since",
                 what, to_shared(p + i), w.thread);
    }
}

// A cp.async writes its destination at some moment between issue and landing: a
// write at issue (racing with unordered earlier accesses), then pending until it lands.
void race_cp_async_issue(Thread &t, const unsigned char *dst) {
    if (!kRacecheck) return;
    race_access(t, dst, 16, true);
    Cta &c = *t.owner;
    for (int i = 0; i < 16; ++i) shadow_of(c, dst + i)->pending = true;
}

void race_cp_async_land(Thread &issuer, const unsigned char *dst) {
    if (!kRacecheck) return;
    Cta &c = *issuer.owner;
    for (int i = 0; i < 16; ++i) {
        ByteShadow *b = shadow_of(c, dst + i);
        b->pending = false;
        b->write = now(c, issuer, false);
    }
}

bool in_registered_buffer(const Launch &l, const void *p, uint64_t bytes) {
    const uint64_t a = reinterpret_cast<uint64_t>(p);
    for (const MaskattnCpuBuffer &b : l.buffers)
        if (a >= b.addr && a + bytes <= b.addr + b.bytes) return true;
    return false;
}

}  // namespace cpu
}  // namespace maskattn

using namespace maskattn::cpu;

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
