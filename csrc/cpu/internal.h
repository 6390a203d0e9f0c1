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

enum class Status : uint8_t { kReady, kAtWarp, kAtBarrier, kAtWarpgroup, kAtMbarrier, kAtNamedBarrier, kExited };

struct Copy {
    uint32_t dst;
    const unsigned char *src;  // null: zero-fill
};

struct Cta;
struct WgmmaOp;

// Racecheck's vector clocks (sm_90 kernels only): what a thread knows of every
// thread's clock (and of the TMA unit's, the last slot), joined at the
// synchronisations that order threads beyond __syncthreads and __syncwarp: mbarrier
// phase completion (arrivals and bulk copies to waiters) and named barriers.
using VectorClock = std::vector<uint32_t>;
constexpr uint32_t kNoEpoch = 0xffffffffu;  // an access made before the clocks started

struct Thread : ThreadView {
    Context context;
    Status status;
    Cta *owner;
    std::vector<std::vector<Copy>> groups;  // committed groups, oldest first, then the open one
    uint32_t cp_seq;                        // cp.async instructions issued, for the bank model
    VectorClock vc;                         // racecheck, once the CTA's clocks started
    uint32_t proxy_fences;                  // fence.proxy.async executed
    bool wgmma_fenced;                      // wgmma.fence since the last wgmma.wait_group
    const void *group_arg;                  // this thread's operand of a warpgroup rendezvous
    uint32_t waits_on;                      // the mbarrier (shared address) it waits on
    uint32_t wait_parity;
    int named_barrier;                      // the named barrier it waits at
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
    int32_t thread;        // -1: none; the CTA's thread count: the TMA unit
    uint32_t collective;   // the warp's collective count, kPlain for a thread's own access
    uint32_t epoch;        // the thread's own vector-clock entry, kNoEpoch before the clocks
    uint32_t proxy_fences; // the thread's fence.proxy.async count
};
constexpr uint32_t kPlain = 0xffffffffu;
constexpr Access kNoAccess = {0, 0, -1, kPlain, kNoEpoch, 0};

struct ByteShadow {
    Access write;
    Access read[2];
    bool pending;             // the write is a cp.async or bulk copy that has not landed
    uint16_t async_readers;   // in-flight wgmma reading the byte (issued, not yet waited)
};

// An element a bulk copy read, held until its mbarrier's phase completes.
struct LandedElement {
    unsigned char *dst;
    uint8_t bytes[4];
    uint8_t n;
    uint32_t epoch;  // the copy's TMA clock
};

// An mbarrier: the runtime's state beside its 8 bytes of shared memory.
struct Mbarrier {
    uint32_t expected;   // arrivals per phase
    uint32_t pending;    // arrivals the current phase still waits for
    int64_t tx;          // transaction bytes the current phase still waits for
    uint32_t phase;      // completed phases
    std::vector<int> waiters;
    VectorClock arrivals;   // racecheck: joined clocks of this phase's arrivals and copies
    VectorClock completed;  // racecheck: those of the last completed phase
    int init_thread;
    bool init_fenced;  // its initialiser executed fence.mbarrier_init since (the TMA needs it)
    // The bulk copies that completed their bytes in this phase: their destinations
    // stay poison until the phase completes, then these bytes appear.
    std::vector<LandedElement> landed;
};

// A bulk tensor copy in flight: it lands (completes its bytes on the mbarrier) at a
// moment the schedule picks.
struct BulkCopy {
    uint32_t dst;
    unsigned char map[128];  // the tensor map as the issuing thread saw it
    int32_t coords[5];
    int rank;
    uint32_t bar;
    int issuer;
    uint32_t epoch;  // the TMA unit's clock for this copy (racecheck)
};

struct NamedBarrier {
    int expected;  // 0: idle
    int arrived;
    std::vector<int> waiters;
    VectorClock joined;  // racecheck
};

// A warpgroup's rendezvous (wgmma.mma_async, setmaxnreg): 128 threads.
struct Warpgroup {
    int op;  // 0: none
    int arrived;
    int regs;  // setmaxnreg's last count, 0 before any
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
    // sm_90
    bool clocks;  // racecheck: vector clocks started (the first mbarrier or named barrier)
    uint32_t tma_clock;
    std::map<uint32_t, Mbarrier> mbarriers;
    std::vector<BulkCopy> bulk;
    NamedBarrier named[16];
    std::vector<Warpgroup> warpgroups;
    // Per warp: committed wgmma groups, oldest first, then the open one.
    std::vector<std::vector<std::vector<std::shared_ptr<WgmmaOp>>>> wgmma_groups;
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
// The bytes [addr, addr + bytes) of the CTA's shared memory, or null (no error raised:
// callable from the scheduler).
unsigned char *shared_ptr(Cta &c, uint32_t addr, uint32_t bytes);
// The shared address of `p` (to_shared of a CTA named explicitly).
uint32_t shared_address_of(Cta &c, const void *p);
void race_access(Thread &t, const unsigned char *p, size_t n, bool write, bool by_collective = false);
void race_cp_async_issue(Thread &t, const unsigned char *dst);
void race_cp_async_land(Thread &issuer, const unsigned char *dst);
// Vector clocks (racecheck): start them, publish a thread's into `into` (then its own
// entry advances), acquire `from` into a thread's.
void start_clocks(Cta &c);
void clock_release(Thread &t, VectorClock &into);
void clock_acquire(Thread &t, const VectorClock &from);
// __syncthreads, __syncwarp and warp collectives join the participants' clocks.
void clock_join(Cta &c, const int *threads, int n);
// A bulk copy's destination: checked as a write by the issuer at issue, pending
// (unreadable) until its mbarrier phase completes; then written by the TMA unit.
void race_bulk_issue(Thread &t, const unsigned char *dst, size_t n, uint32_t epoch);
// Returns the first byte a wgmma still reads (a race), or null.
const unsigned char *race_bulk_land(Cta &c, const unsigned char *dst, size_t n, uint32_t epoch);
// wgmma's shared operands: read from issue to the wait that retires it.
void race_async_read_begin(Cta &c, const unsigned char *p, size_t n);
void race_async_read_end(Thread &t, const unsigned char *p, size_t n);
// A generic-proxy write not followed by fence.proxy.async of its writer, then
// accessed by the async proxy (a wgmma read, a TMA write): an error naming `what`.
void check_proxy_fence(Thread &t, const unsigned char *p, size_t n, const char *what);

// isa_sm90_*.cpp
// Lands one bulk copy in flight (the scheduler's choice), completing its transactions.
void land_bulk(Cta &c, size_t i);
// The mbarrier at `bar` receives `bytes` of completed transactions and the elements a
// copy read, which appear in shared memory when its phase completes.
void mbarrier_complete_tx(Cta &c, uint32_t bar, std::vector<LandedElement> &&landed, uint32_t bytes,
                          uint32_t tma_epoch);
// The deadlock report's lines for threads at mbarriers, named barriers and
// warpgroup rendezvous.
std::string describe_sm90_waits(const Cta &c);
// A rendezvous of the calling thread's warpgroup (128 threads) at `op`; `run` executes
// it once, in the last thread to arrive, from each thread's `group_arg`.
void warpgroup_rendezvous(Thread &t, int op, const void *arg, void (*run)(Cta &c, int warpgroup));
constexpr int kGroupWgmma = 1, kGroupSetmaxnreg = 2;
// wgmma.commit_group / wait_group as warp collectives (isa_sm90_wgmma.cpp).
void wgmma_commit_warp(Cta &c, int w);
void wgmma_retire_warp(Cta &c, int w, int pending);

// isa_sm80.cpp
float half_to_float(uint16_t h);
float bf16_to_float(uint16_t h);
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
