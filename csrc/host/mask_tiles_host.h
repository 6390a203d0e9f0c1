/* C entry points of csrc/mask_tiles.h compiled for the host, for Rust (bindgen
 * reads this header, which pulls in params.h and the CPU backend's ABI). */
#ifndef MASKATTN_MASK_TILES_HOST_H
#define MASKATTN_MASK_TILES_HOST_H

#include "../cpu/abi.h"
#include "../params.h"

#ifdef __cplusplus
extern "C" {
#endif

MaskattnTileSummary maskattn_summarize_rows(const int32_t *intervals, int32_t row_begin,
                                            int32_t row_end);
MaskattnTileSummary maskattn_summary_merge(const MaskattnTileSummary *a,
                                           const MaskattnTileSummary *b);
int32_t maskattn_classify_key_tile(const MaskattnTileSummary *s, int64_t k0, int64_t k1);
void maskattn_key_tile_range(const MaskattnTileSummary *s, int32_t block_n, int32_t *begin,
                             int32_t *end);
int32_t maskattn_key_visible(const int32_t *row_intervals, int32_t k);

#ifdef __cplusplus
}
#endif

#endif
