// The CPU backend's build of the primitives (csrc/prims.cuh): the same functions as
// prims/ptx.cuh, emulated as the PTX ISA defines the instructions. The warp-wide
// ones (ldmatrix, mma) are collectives of the runtime (csrc/cpu/isa_sm80.cpp), which
// computes them for the whole warp from the fragments each lane hands in.
#pragma once

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <tuple>
#include <type_traits>
#include <utility>

#include "cpu/builtins.h"

// Static shared memory: one allocation per CTA and declaration site, in the CTA's
// shared window, poisoned at the start of every CTA like the dynamic buffer.
#define MASKATTN_SHARED(Type, name)                                                        \
    static char name##_site;                                                               \
    ::maskattn::shared_type<Type> &name = *static_cast<::maskattn::shared_type<Type> *>(   \
        ::maskattn::cpu::static_shared(&name##_site, sizeof(Type), alignof(Type)))

#define MASKATTN_REGISTER_KERNEL(name) \
    static const ::maskattn::cpu::Registration<decltype(&name)> maskattn_registration_##name(#name, name);

namespace maskattn {

template <class T>
using shared_type = T;

inline unsigned char *dynamic_smem() { return cpu::dynamic_shared(); }

inline int fresh_thread_index() { return int(cpu::self().thread_idx.x); }

inline void trace_key_tile(int cls) { cpu::count_key_tile(cls); }

namespace cpu {

// The C layout of a struct whose fields are Args...: field offsets and size, which
// is how Rust (#[repr(C)]) passes a kernel's argument list.
template <class... Args>
struct ArgLayout {
    static constexpr size_t kCount = sizeof...(Args);
    static constexpr size_t size[kCount > 0 ? kCount : 1] = {sizeof(Args)...};
    static constexpr size_t align[kCount > 0 ? kCount : 1] = {alignof(Args)...};
    static constexpr size_t offset(size_t i) {
        size_t off = 0;
        for (size_t j = 0; j <= i; ++j) {
            off = (off + align[j] - 1) / align[j] * align[j];
            if (j < i) off += size[j];
        }
        return off;
    }
    static constexpr size_t bytes() {
        size_t max_align = 1;
        for (size_t j = 0; j < kCount; ++j) max_align = align[j] > max_align ? align[j] : max_align;
        const size_t end = kCount == 0 ? 0 : offset(kCount - 1) + size[kCount - 1];
        return (end + max_align - 1) / max_align * max_align;
    }
};

template <class T>
T load_arg(const unsigned char *p) {
    typename std::remove_cv<T>::type v;
    memcpy(&v, p, sizeof(v));
    return v;
}

template <class Fn>
struct Registration;

template <class... Args>
struct Registration<void (*)(Args...)> {
    using Layout = ArgLayout<typename std::decay<Args>::type...>;
    template <size_t... I>
    static void call(void (*fn)(Args...), const unsigned char *args, std::index_sequence<I...>) {
        fn(load_arg<typename std::decay<Args>::type>(args + Layout::offset(I))...);
    }
    static void trampoline(void (*fn)(), const unsigned char *args) {
        call(reinterpret_cast<void (*)(Args...)>(fn), args, std::index_sequence_for<Args...>{});
    }
    Registration(const char *name, void (*fn)(Args...)) {
        register_kernel(name, reinterpret_cast<void (*)()>(fn), &trampoline, Layout::bytes());
    }
};

}  // namespace cpu

namespace fwd {

inline uint32_t smem_u32(const void *p) { return cpu::to_shared(p); }

inline void cp_async_16(uint32_t dst, const void *src, bool valid) { cpu::cp_async_16(dst, src, valid); }

inline void cp_async_commit() { cpu::cp_async_commit(); }

template <int N>
inline void cp_async_wait() {
    cpu::cp_async_wait(N);
}

inline void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
    cpu::LaneIo &io = cpu::self().io;
    io.in[0] = addr;
    cpu::collective(cpu::Op::kLdmatrix, 0xffffffffu);
    memcpy(r, io.out, sizeof(r));
}

inline void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) {
    cpu::LaneIo &io = cpu::self().io;
    io.in[0] = addr;
    cpu::collective(cpu::Op::kLdmatrixTrans, 0xffffffffu);
    memcpy(r, io.out, sizeof(r));
}

template <typename Elem>
inline void mma_16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    static_assert(std::is_same<Elem, __half>::value || std::is_same<Elem, __nv_bfloat16>::value, "f16 or bf16");
    cpu::LaneIo &io = cpu::self().io;
    memcpy(io.in, a, 16);
    io.in[4] = b0;
    io.in[5] = b1;
    memcpy(io.in + 6, c, 16);
    cpu::collective(std::is_same<Elem, __half>::value ? cpu::Op::kMmaF16 : cpu::Op::kMmaBf16, 0xffffffffu);
    memcpy(c, io.out, 16);
}

// cvt.rn.{f16,bf16}.f32: round to nearest even; overflow rounds to infinity, NaN
// becomes the canonical NaN 0x7fff.
inline uint32_t round_shift_even(uint64_t m, int shift) {
    if (shift <= 0) return uint32_t(m);
    if (shift >= 64) return 0;
    const uint64_t q = m >> shift, rem = m & ((uint64_t(1) << shift) - 1), half = uint64_t(1) << (shift - 1);
    return uint32_t(q + (rem > half || (rem == half && (q & 1))));
}

inline uint16_t f32_to_f16_rn(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    const uint16_t sign = uint16_t((x >> 16) & 0x8000u);
    const int exp = int((x >> 23) & 0xff);
    const uint32_t mant = x & 0x7fffffu;
    if (exp == 0xff) return mant != 0 ? uint16_t(0x7fff) : uint16_t(sign | 0x7c00u);
    // |f| = m * 2^(e2): exact for normal and subnormal floats.
    const uint64_t m = exp == 0 ? mant : (mant | 0x800000u);
    const int e2 = (exp == 0 ? 1 : exp) - 150;
    if (m == 0) return sign;
    if (exp - 127 < -14) {
        // f16 subnormal range: a multiple of 2^-24 (which may round up to the
        // smallest normal, whose encoding follows on).
        return uint16_t(sign | round_shift_even(m, -24 - e2));
    }
    uint32_t q = round_shift_even(m, 13);  // 11 significant bits
    int e = exp - 127;
    if (q >= 0x800u) {
        q >>= 1;
        ++e;
    }
    if (e > 15) return uint16_t(sign | 0x7c00u);
    return uint16_t(sign | uint32_t(e + 15) << 10 | (q & 0x3ffu));
}

inline uint16_t f32_to_bf16_rn(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffffu) > 0x7f800000u) return 0x7fff;
    return uint16_t((x + 0x7fffu + ((x >> 16) & 1)) >> 16);
}

template <typename Elem>
inline uint32_t pack2(float lo, float hi) {
    static_assert(std::is_same<Elem, __half>::value || std::is_same<Elem, __nv_bfloat16>::value, "f16 or bf16");
    if (std::is_same<Elem, __half>::value) return uint32_t(f32_to_f16_rn(lo)) | uint32_t(f32_to_f16_rn(hi)) << 16;
    return uint32_t(f32_to_bf16_rn(lo)) | uint32_t(f32_to_bf16_rn(hi)) << 16;
}

// ex2.approx.ftz.f32: subnormal inputs and results flush to zero. The SFU's result
// is an approximation (about 2 ulp); the host's exp2f is nearer the exact value, so
// the two may differ in the last bits.
inline float exp2_approx(float x) {
    if (fpclassify(x) == FP_SUBNORMAL) x = 0.f;
    const float y = exp2f(x);
    return fpclassify(y) == FP_SUBNORMAL ? 0.f : y;
}

}  // namespace fwd
}  // namespace maskattn
#include "cpu/prims_sm90.h"
