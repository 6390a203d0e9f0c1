// Placeholders of the sm_90 runtime entry points until their rooms land.
#include "cpu/internal.h"

namespace maskattn {
namespace cpu {

void mbarrier_init(uint32_t, uint32_t) { fail("mbarrier: not emulated yet"); }
void mbarrier_arrive(uint32_t, uint32_t) { fail("mbarrier: not emulated yet"); }
bool mbarrier_try_wait(uint32_t, uint32_t) { fail("mbarrier: not emulated yet"); }
void fence_mbarrier_init() { fail("fence: not emulated yet"); }
void fence_proxy_async() { fail("fence: not emulated yet"); }
void named_barrier(int, int, bool) { fail("bar.sync: not emulated yet"); }
bool elect_one() { fail("elect.sync: not emulated yet"); }
void setmaxnreg(int, bool) { fail("setmaxnreg: not emulated yet"); }
void tma_load(uint32_t, const void *, uint32_t, const int32_t *, int) { fail("TMA: not emulated yet"); }
void wgmma_fence() { fail("wgmma: not emulated yet"); }
void wgmma_commit() { fail("wgmma: not emulated yet"); }
void wgmma_wait(int) { fail("wgmma: not emulated yet"); }
void wgmma(const WgmmaIssue &) { fail("wgmma: not emulated yet"); }

}  // namespace cpu
}  // namespace maskattn
