/* The C ABI of the CPU backend (csrc/cpu/execution.cpp): the kernels of csrc/ (every .cu file)
 * compiled by the host C++ compiler and executed warp-synchronously, one fiber per
 * CUDA thread. Rust (src/cpu) launches a kernel by its extern "C" name with the
 * same grid, block, dynamic shared memory and params struct as on the GPU.
 * Plain C, fixed-width types: bindgen reads it through csrc/host/mask_tiles_host.h. */
#ifndef MASKATTN_CPU_ABI_H
#define MASKATTN_CPU_ABI_H

#include <stdint.h>

/* How the warps of a CTA are interleaved between synchronization points. */
#define MASKATTN_CPU_SCHEDULE_RANDOM 0 /* a seeded random runnable thread at each step */
#define MASKATTN_CPU_SCHEDULE_VICTIM 1 /* one seeded warp of each CTA runs only when nothing else can */
#define MASKATTN_CPU_SCHEDULE_ROUND_ROBIN 2 /* threads in order: the fair, GPU-like interleaving */

/* A global-memory buffer the launch may touch; cp.async sources outside every
 * registered buffer are errors. */
typedef struct MaskattnCpuBuffer {
    uint64_t addr;
    uint64_t bytes;
} MaskattnCpuBuffer;

typedef struct MaskattnCpuOptions {
    uint64_t seed;
    int32_t schedule;       /* MASKATTN_CPU_SCHEDULE_* */
    int32_t workers;        /* OS threads running CTAs in parallel; 0 = one per core */
    int32_t early_landing;  /* 1: pending cp.async copies may land at any scheduling step
                               between issue and wait (seeded), not only at the wait */
    int32_t n_buffers;
    const MaskattnCpuBuffer *buffers;
    uint32_t max_dynamic_smem; /* the shared-memory budget a block may use (bytes) */
} MaskattnCpuOptions;

/* Per-launch counters, summed over CTAs. Bank conflicts count the extra shared-memory
 * wavefronts of warp-wide accesses (0 = conflict-free). */
typedef struct MaskattnCpuCounters {
    uint64_t ctas;
    uint64_t mma;
    uint64_t ldmatrix;
    uint64_t ldmatrix_conflicts;
    uint64_t cp_async;            /* 16-byte copies issued, zero-fills included */
    uint64_t cp_async_zero_fill;  /* copies with src-size 0 */
    uint64_t bytes_global_to_shared; /* bytes cp.async read from global memory */
    uint64_t cp_async_conflicts;
    uint64_t barriers;            /* __syncthreads, counted once per CTA */
    uint64_t warp_syncs;          /* __syncwarp, shuffles and votes, once per warp */
    uint64_t key_tiles[3];        /* key tiles walked per class (MASKATTN_TILE_*), per CTA */
    uint64_t races;               /* racecheck builds: conflicting shared accesses seen */
    uint64_t wgmma;               /* wgmma.mma_async, once per warpgroup */
    uint64_t tma_loads;           /* cp.async.bulk.tensor loads issued */
    uint64_t bytes_tma;           /* bytes those loads wrote to shared memory (the boxes, fill included) */
} MaskattnCpuCounters;

#ifdef __cplusplus
extern "C" {
#endif

/* Runs kernel `name` over the grid. Returns 0 on success; otherwise the first
 * error (bad launch, out-of-bounds or misaligned access by a primitive, divergent
 * warp, barrier deadlock, race in racecheck builds) is written to err, naming the
 * kernel, block, warp and lanes. */
int32_t maskattn_cpu_launch(const char *name, const uint32_t *grid, const uint32_t *block, uint32_t dynamic_smem,
                            const void *params, uint64_t params_bytes, const MaskattnCpuOptions *options,
                            MaskattnCpuCounters *counters, char *err, uint64_t err_bytes);

/* 1 when this build checks shared-memory races (MASKATTN_CPU_RACECHECK), 2 when it
 * runs under AddressSanitizer + UndefinedBehaviorSanitizer (memcheck), 0 plain. */
int32_t maskattn_cpu_check_mode(void);

#ifdef __cplusplus
}
#endif

#endif
