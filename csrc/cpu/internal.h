// The CPU backend runtime's internal state, shared by its rooms: execution.cpp
// (fibers, the CTA scheduler, collectives' rendezvous, barriers, launches), memory.cpp
// (shared memory, poison, bounds, racecheck) and the ISA's operations (isa_sm80.cpp:
// mma.sync, ldmatrix, cp.async, shuffles and votes). See csrc/cpu/runtime.h for what
// the kernels' primitives see.
#pragma once

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

// A fiber's saved execution context (execution.cpp switches between them).
#if defined(__x86_64__)
struct Context {
    void *sp = nullptr;
};
#else
struct Context {
    ucontext_t uc;
};
#endif

struct KernelEntry {
    void (*fn)();
    Trampoline trampoline;
    size_t args_bytes;
};

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

inline Cta &cta_of_self() { return *static_cast<Thread *>(tls_thread)->owner; }

uint3 uint3_of(uint32_t x, uint32_t y, uint32_t z);

// execution.cpp
void warp_lanes(char *buf, size_t n, uint32_t mask);
const char *op_name(Op op);
void record_error(Launch &l, const Cta *cta, const Thread *t, const char *msg);
// Leaves the current fiber for the scheduler; it is resumed once made ready again.
void yield(Thread &t);
void make_ready(Cta &c, int tid);
// A lane about to wait at a barrier or to exit must not be expected at its warp's
// pending collective.
void check_not_awaited(Thread &t, const char *doing);

// memory.cpp
bool in_registered_buffer(const Launch &l, const void *p, uint64_t bytes);
ByteShadow *shadow_of(Cta &c, const unsigned char *p);
void race_access(Thread &t, const unsigned char *p, size_t n, bool write, bool by_collective = false);
void race_cp_async_issue(Thread &t, const unsigned char *dst);
void race_cp_async_land(Thread &issuer, const unsigned char *dst);

// isa_sm80.cpp
// Extra wavefronts of one phase of 16-byte accesses.
uint64_t phase_conflicts(const uint32_t *addr, int n);
// A cp.async copy arrives in shared memory.
void land(Thread &issuer, const Copy &copy);
// Early landing: one pending copy of a random thread arrives now.
void land_one_early(Cta &c);
// Executes warp collective `op` for the lanes of `mask` of warp w, from their LaneIo.
void execute(Cta &c, int w, Op op, uint32_t mask);

}  // namespace cpu
}  // namespace maskattn
