// The CPU backend's build of the sm_90 primitives (csrc/prims/sm90.cuh): the same
// functions, emulated by the runtime as the PTX ISA defines the instructions:
// mbarriers and named barriers in execution.cpp, TMA in isa_sm90_tma.cpp, wgmma in
// isa_sm90_wgmma.cpp.
#pragma once

#include <stdint.h>

#include <type_traits>

#include "cpu/runtime.h"

namespace maskattn {
namespace sm90 {

struct alignas(64) TensorMap {
    uint64_t opaque[16];
};

inline uint32_t smem_u32(const void *p) { return cpu::to_shared(p); }

inline void mbarrier_init(uint32_t bar, uint32_t count) { cpu::mbarrier_init(bar, count); }
inline void fence_mbarrier_init() { cpu::fence_mbarrier_init(); }
inline void fence_proxy_async_shared() { cpu::fence_proxy_async(); }
inline void mbarrier_arrive(uint32_t bar) { cpu::mbarrier_arrive(bar, 0); }
inline void mbarrier_arrive_expect_tx(uint32_t bar, uint32_t bytes) { cpu::mbarrier_arrive(bar, bytes); }
inline bool mbarrier_try_wait_parity(uint32_t bar, uint32_t parity) { return cpu::mbarrier_try_wait(bar, parity); }
inline bool mbarrier_test_wait_parity(uint32_t bar, uint32_t parity) { return cpu::mbarrier_test_wait(bar, parity); }
inline void mbarrier_expect_tx(uint32_t bar, uint32_t bytes) { cpu::mbarrier_tx(bar, int64_t(bytes)); }
inline void mbarrier_complete_tx(uint32_t bar, uint32_t bytes) { cpu::mbarrier_tx(bar, -int64_t(bytes)); }
inline void mbarrier_wait(uint32_t bar, uint32_t parity) {
    while (!mbarrier_try_wait_parity(bar, parity)) {
    }
}

inline void named_barrier_sync(int id, int threads) { cpu::named_barrier(id, threads, true); }
inline void named_barrier_arrive(int id, int threads) { cpu::named_barrier(id, threads, false); }
inline bool elect_one() { return cpu::elect_one(); }

template <int N>
inline void setmaxnreg_inc() {
    static_assert(N >= 24 && N <= 256 && N % 8 == 0, "setmaxnreg takes 24..256 in steps of 8");
    cpu::setmaxnreg(N, true);
}

template <int N>
inline void setmaxnreg_dec() {
    static_assert(N >= 24 && N <= 256 && N % 8 == 0, "setmaxnreg takes 24..256 in steps of 8");
    cpu::setmaxnreg(N, false);
}

template <int Rank>
inline void tma_load(uint32_t dst, const TensorMap *map, uint32_t bar, const int32_t (&c)[Rank]) {
    static_assert(Rank >= 1 && Rank <= 5, "tensor maps have 1 to 5 dimensions");
    cpu::tma_load(dst, map, bar, c, Rank);
}

inline void wgmma_fence() { cpu::wgmma_fence(); }
inline void wgmma_commit() { cpu::wgmma_commit(); }

template <int N>
inline void wgmma_wait() {
    cpu::wgmma_wait(N);
}

template <int R>
inline void fence_registers(float (&)[R]) {}
template <int R>
inline void fence_registers(uint32_t (&)[R]) {}

template <typename Elem>
constexpr bool is_bf16() {
    static_assert(std::is_same<Elem, __half>::value || std::is_same<Elem, __nv_bfloat16>::value, "f16 or bf16");
    return std::is_same<Elem, __nv_bfloat16>::value;
}

template <typename Elem, int N, int TransA, int TransB>
inline void wgmma_ss(float (&d)[N / 2], uint64_t desc_a, uint64_t desc_b, int scale_d) {
    static_assert(N == 64 || N == 96 || N == 128 || N == 192 || N == 256, "N is 64, 96, 128, 192 or 256");
    cpu::wgmma(cpu::WgmmaIssue{N, is_bf16<Elem>(), TransA != 0, TransB != 0, scale_d != 0, desc_a, nullptr, desc_b, d});
}

template <typename Elem, int N, int TransB>
inline void wgmma_rs(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t desc_b, int scale_d) {
    static_assert(N == 64 || N == 96 || N == 128 || N == 192 || N == 256, "N is 64, 96, 128, 192 or 256");
    cpu::wgmma(cpu::WgmmaIssue{N, is_bf16<Elem>(), false, TransB != 0, scale_d != 0, 0, a, desc_b, d});
}

}  // namespace sm90
}  // namespace maskattn
