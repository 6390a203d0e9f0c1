// The tensor memory accelerator on the CPU backend, as the PTX ISA defines
// cp.async.bulk.tensor (tile mode, shared::cluster destination of this CTA,
// mbarrier::complete_tx::bytes): the issuing thread hands the copy over and goes on;
// the copy lands at a moment the schedule picks (at the latest when no thread can run
// without it): it reads the whole box (out-of-bounds elements as the map's fill, the
// destination swizzled as the map says) and completes its bytes as transactions on
// the mbarrier. Its destination reads as poison until that mbarrier phase completes
// (and, in racecheck, is pending: any access before is an error); then the box
// appears, written by the TMA unit, ordered before a thread only through a wait on
// that mbarrier. The box traversal is the pure sm90::visit_box.
#include "cpu/internal.h"
#include "cpu/sm90_isa.h"

namespace maskattn {
namespace cpu {

namespace {

struct IssueCheck {
    Thread *t;
    const sm90::CpuTensorMap *m;
    uint64_t in_bounds;
};

void check_source(void *ctx, uint32_t, const unsigned char *src) {
    IssueCheck &x = *static_cast<IssueCheck *>(ctx);
    if (src == nullptr) return;
    if (!in_registered_buffer(*x.t->owner->launch, src, x.m->elem_bytes))
        fail("cp.async.bulk.tensor: the tensor map's element at %p is outside every buffer of the launch",
             static_cast<const void *>(src));
    x.in_bounds += x.m->elem_bytes;
}

struct Landing {
    Cta *c;
    const BulkCopy *copy;
    const sm90::CpuTensorMap *m;
    std::vector<LandedElement> elements;
};

void land_element(void *ctx, uint32_t dst, const unsigned char *src) {
    Landing &x = *static_cast<Landing *>(ctx);
    const uint32_t addr =
        sm90::swizzle_address(x.copy->dst + dst, static_cast<sm90::Swizzle>(x.m->swizzle));
    LandedElement e{shared_ptr(*x.c, addr, x.m->elem_bytes), {}, x.m->elem_bytes, x.copy->epoch};
    if (src != nullptr)
        memcpy(e.bytes, src, x.m->elem_bytes);
    else
        memset(e.bytes, x.m->oob_nan ? 0xff : 0, x.m->elem_bytes);
    x.elements.push_back(e);
}

}  // namespace

void tma_load(uint32_t dst, const void *map, uint32_t bar, const int32_t *coords, int rank) {
    Thread &t = *static_cast<Thread *>(tls_thread);
    Cta &c = *t.owner;
    sm90::CpuTensorMap m;
    memcpy(&m, map, sizeof m);
    if (reinterpret_cast<uintptr_t>(map) % 64 != 0)
        fail("cp.async.bulk.tensor: the tensor map at %p is not 64-byte aligned", map);
    if (m.magic != sm90::kCpuTensorMapMagic)
        fail("cp.async.bulk.tensor: the map at %p is not a tensor map the launch plan encoded for the CPU backend",
             map);
    if (const char *why = sm90::check_tensor_map(m)) fail("cp.async.bulk.tensor: %s", why);
    if (m.rank != rank) fail("cp.async.bulk.tensor.%dd with a tensor map of rank %d", rank, int(m.rank));
    const uint32_t bytes = sm90::box_bytes(m);
    // The ISA: the shared destination of a tensor copy is 128-byte aligned; the box
    // must fit the shared memory it is written to.
    unsigned char *d = shared_at(dst, bytes, 128, "cp.async.bulk.tensor destination (the whole box)");
    shared_at(bar, 8, 8, "cp.async.bulk.tensor mbarrier");
    const auto found = c.mbarriers.find(bar);
    if (found == c.mbarriers.end()) fail("cp.async.bulk.tensor: shared address 0x%x holds no initialised mbarrier", bar);
    const Mbarrier &b = found->second;
    if (!b.init_fenced)
        fail("cp.async.bulk.tensor completes on the mbarrier at 0x%x, whose initialisation thread %d has not made "
             "visible to the async proxy (fence.mbarrier_init)",
             bar, b.init_thread);
    if (kRacecheck) race_access(t, shared_ptr(c, bar, 8), 8, false);
    IssueCheck check{&t, &m, 0};
    sm90::visit_box(m, coords, &check_source, &check);
    // A generic-proxy write the copy overwrites must be fenced before the async proxy's.
    check_proxy_fence(t, d, bytes, "cp.async.bulk.tensor");
    const uint32_t epoch = ++c.tma_clock;
    race_bulk_issue(t, d, bytes, epoch);
    memset(d, 0xff, bytes);  // poison until its phase completes
    BulkCopy copy;
    copy.dst = dst;
    memcpy(copy.map, &m, sizeof m);
    for (int i = 0; i < 5; ++i) copy.coords[i] = i < rank ? coords[i] : 0;
    copy.rank = rank;
    copy.bar = bar;
    copy.issuer = t.linear;
    copy.epoch = epoch;
    c.bulk.push_back(copy);
    ++c.counters.tma_loads;
    c.counters.bytes_tma += bytes;
    c.counters.bytes_global_to_shared += check.in_bounds;
}

void land_bulk(Cta &c, size_t i) {
    const BulkCopy copy = c.bulk[i];
    c.bulk[i] = c.bulk.back();
    c.bulk.pop_back();
    sm90::CpuTensorMap m;
    memcpy(&m, copy.map, sizeof m);
    Landing landing{&c, &copy, &m, {}};
    landing.elements.reserve(sm90::box_bytes(m) / m.elem_bytes);
    sm90::visit_box(m, copy.coords, &land_element, &landing);
    mbarrier_complete_tx(c, copy.bar, std::move(landing.elements), sm90::box_bytes(m), copy.epoch);
}

}  // namespace cpu
}  // namespace maskattn
