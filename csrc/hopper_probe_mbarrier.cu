// One thread runs a script of mbarrier operations on one barrier and records what
// each test_wait.parity saw: the conformance test of the mbarrier's phase rules
// (src/launch/probe_mbarrier.rs predicts every answer from the PTX ISA's rules), on
// the CPU backend and, when there is one, an sm_90 GPU.
#include "params.h"
#include "prims.cuh"

// ops [n_ops][2]: (operation, argument); out: one word per test (1: the phase of that
// parity has completed). Operations: 0 init(count), 1 arrive, 2 arrive.expect_tx(bytes),
// 3 expect_tx(bytes), 4 complete_tx(bytes), 5 test_wait.parity(parity).
extern "C" __global__ void maskattn_probe_hopper_mbarrier(const int32_t *ops, int32_t n_ops, uint32_t *out) {
    using namespace maskattn::sm90;
    const uint32_t bar = smem_u32(maskattn::dynamic_smem());
    int tests = 0;
    for (int i = 0; i < n_ops; ++i) {
        const int32_t op = ops[2 * i], arg = ops[2 * i + 1];
        if (op == 0) {
            mbarrier_init(bar, uint32_t(arg));
            fence_mbarrier_init();
        } else if (op == 1) {
            mbarrier_arrive(bar);
        } else if (op == 2) {
            mbarrier_arrive_expect_tx(bar, uint32_t(arg));
        } else if (op == 3) {
            mbarrier_expect_tx(bar, uint32_t(arg));
        } else if (op == 4) {
            mbarrier_complete_tx(bar, uint32_t(arg));
        } else {
            out[tests++] = mbarrier_test_wait_parity(bar, uint32_t(arg)) ? 1 : 0;
        }
    }
}
MASKATTN_REGISTER_KERNEL(maskattn_probe_hopper_mbarrier)
