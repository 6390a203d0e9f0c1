// Host build of csrc/mask_tiles.h: thin extern "C" wrappers, no logic of their own.
#include "mask_tiles_host.h"

#include "../mask_tiles.h"

extern "C" {

MaskattnTileSummary maskattn_summarize_rows(const int32_t *intervals, int32_t row_begin,
                                            int32_t row_end) {
    return maskattn::summarize_rows(intervals, row_begin, row_end);
}

MaskattnTileSummary maskattn_summary_merge(const MaskattnTileSummary *a,
                                           const MaskattnTileSummary *b) {
    return maskattn::summary_merge(*a, *b);
}

int32_t maskattn_classify_key_tile(const MaskattnTileSummary *s, int64_t k0, int64_t k1) {
    return maskattn::classify_key_tile(*s, k0, k1);
}

void maskattn_key_tile_range(const MaskattnTileSummary *s, int32_t block_n, int32_t *begin,
                             int32_t *end) {
    maskattn::key_tile_range(*s, block_n, begin, end);
}

int32_t maskattn_key_visible(const int32_t *row_intervals, int32_t k) {
    return maskattn::key_visible(row_intervals, k) ? 1 : 0;
}

}
