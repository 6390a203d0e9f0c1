// The CPU backend's execution model, as the host builds of the primitives
// (csrc/cpu/prims.h) and builtins (csrc/cpu/builtins.h) see it. A launch runs its
// CTAs in parallel on OS threads; inside a CTA every CUDA thread is a fiber that
// runs until it reaches a synchronization point (a warp collective, a barrier, its
// exit) and then yields to the CTA's scheduler. Warp collectives are rendezvous of
// the lanes their mask names: the last lane to arrive executes the instruction for
// all of them, from the operands each lane left in its LaneIo.
#pragma once

#include <stddef.h>
#include <stdint.h>

#include <vector_types.h>

namespace maskattn {
namespace cpu {

enum class Op : uint8_t {
    kNone,
    kSyncWarp,
    kShflXor,
    kVoteAny,
    kLdmatrix,
    kLdmatrixTrans,
    kMmaF16,
    kMmaBf16,
    kElect,
    kWgmmaCommit,
    kWgmmaWait,
};

// A lane's operands and results of a warp collective.
struct LaneIo {
    uint32_t in[12];
    uint32_t out[4];
};

// What the builtins read; the runtime's CTA state extends it.
struct CtaView {
    uint3 block_idx;
    uint3 block_dim;
    uint3 grid_dim;
};

struct ThreadView {
    uint3 thread_idx;
    int linear, warp, lane;
    const CtaView *cta;
    LaneIo io;
};

// The fiber running on this OS thread (fibers never migrate between OS threads).
extern __thread ThreadView *tls_thread;

inline ThreadView &self() { return *tls_thread; }

// Warp collective `op` over the lanes of `mask`; self().io holds this lane's
// operands before the call and its results after.
void collective(Op op, uint32_t mask);
// __syncthreads().
void block_barrier();

// Shared memory: a CTA's dynamic buffer (exactly the launch's size) at shared
// addresses [0, size), static __shared__ variables above kStaticBase.
constexpr uint32_t kStaticBase = 0x01000000u;
unsigned char *dynamic_shared();
void *static_shared(const void *site, size_t bytes, size_t align);
uint32_t to_shared(const void *p);
// `bytes` at shared address `addr`, checked against the CTA's shared memory and for
// `align`ment; `what` names the instruction in the error.
unsigned char *shared_at(uint32_t addr, uint32_t bytes, uint32_t align, const char *what);

void cp_async_16(uint32_t dst, const void *src, bool valid);
void cp_async_commit();
void cp_async_wait(int pending);

void count_key_tile(int cls);

// sm_90 (csrc/cpu/prims_sm90.h). mbarriers live in shared memory; the runtime keeps
// their state beside it, keyed by address.
void mbarrier_init(uint32_t bar, uint32_t count);
// expect_tx(tx_bytes) (when non-zero), then arrive.
void mbarrier_arrive(uint32_t bar, uint32_t tx_bytes);
// Blocks the fiber until the phase of `parity` completes (the GPU's spin), then true.
bool mbarrier_try_wait(uint32_t bar, uint32_t parity);
// test_wait: one look (a false yields the fiber, so that a spin on it progresses).
bool mbarrier_test_wait(uint32_t bar, uint32_t parity);
// expect_tx (bytes > 0) or complete_tx (bytes < 0) by a thread, without arriving.
void mbarrier_tx(uint32_t bar, int64_t bytes);
void fence_mbarrier_init();
void fence_proxy_async();
void named_barrier(int id, int threads, bool wait);
bool elect_one();
void setmaxnreg(int regs, bool inc);
void tma_load(uint32_t dst, const void *map, uint32_t bar, const int32_t *coords, int rank);
void wgmma_fence();
void wgmma_commit();
void wgmma_wait(int pending);
// One wgmma.mma_async of the calling thread's warpgroup: a rendezvous of its 128 threads.
struct WgmmaIssue {
    int n;
    bool bf16, trans_a, trans_b, scale_d;
    uint64_t desc_a;        // A from shared memory, when a_regs is null
    const uint32_t *a_regs;  // A from registers: this thread's four
    uint64_t desc_b;
    float *d;  // this thread's n / 2 accumulator registers
};
void wgmma(const WgmmaIssue &issue);

[[noreturn]] void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

// Kernel registry: the host build's MASKATTN_REGISTER_KERNEL adds each extern "C"
// entry point with a trampoline that unpacks its arguments from the bytes of a C
// struct whose fields are the kernel's parameters in order.
using Trampoline = void (*)(void (*fn)(), const unsigned char *args);
void register_kernel(const char *name, void (*fn)(), Trampoline trampoline, size_t args_bytes);

}  // namespace cpu
}  // namespace maskattn
