//! Tile classification, run through the host build of `csrc/mask_tiles.h`: the
//! same code the kernels run, so what the tests see is what the GPU does.

use crate::ffi;
use crate::mask::Mask;

/// The summary of a query tile's row intervals (min/max of starts and ends).
pub type TileSummary = ffi::MaskattnTileSummary;

/// How a (query tile, key tile) pair is processed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TileClass {
    /// No visible pair: skipped without loading K or V.
    Empty,
    /// Every pair visible: computed without a per-element mask.
    Full,
    /// Mixed: the per-element mask is applied.
    Partial,
}

/// Which of the kernels' tile configurations runs. Each configuration fits a budget
/// of shared memory per block; today only the backward at head dims 96 and 128 has
/// two (see the README's GPU table), everywhere else both names run the one there is.
///
/// Set it with [`crate::cuda::Gpu::with_tile_config`] or
/// [`crate::cpu::CpuOptions::tile_config`]; the backward's choice is made when its mask
/// is uploaded, as its tables depend on the query tiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum TileConfig {
    /// The pipelined configuration where it fits the device's shared memory per
    /// block, else the compact one.
    #[default]
    Auto,
    /// The backward's (Q, dO) tiles double-buffered, 64-row query tiles: the next
    /// step's loads overlap this step's products. 117,760 B at D = 96 and 150,528 B at
    /// D = 128 (sm_80, sm_90).
    Pipelined,
    /// Fits 99 KB per block (sm_86, sm_89, sm_120): the backward's (Q, dO) tiles
    /// single-buffered, 32-row query tiles at D = 128; 91,648 B at D = 96 and 90,880 B
    /// at D = 128.
    Compact,
}

/// Tile sizes of a kernel: `block_m` query rows by `block_n` keys, both in
/// `1..=2^31 - 1` (checked by [`TileShape::new`], the only way to make one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TileShape {
    block_m: usize,
    block_n: usize,
}

impl TileShape {
    /// A tile of `block_m` query rows by `block_n` keys.
    pub fn new(block_m: usize, block_n: usize) -> crate::Result<Self> {
        let ok = |n: usize| (1..=i32::MAX as usize).contains(&n);
        if !ok(block_m) || !ok(block_n) {
            return Err(crate::error::invalid(
                "tile shape",
                format!("{block_m}x{block_n}: both sides must be in 1..=2^31-1"),
            ));
        }
        Ok(Self { block_m, block_n })
    }

    /// Query rows per tile.
    pub fn block_m(&self) -> usize {
        self.block_m
    }

    /// Keys per tile.
    pub fn block_n(&self) -> usize {
        self.block_n
    }
}

/// Summary of rows `rows` of the mask (clipped to `Lq`).
pub fn summarize(mask: &Mask, rows: std::ops::Range<usize>) -> TileSummary {
    let end = rows.end.min(mask.len_q());
    let start = rows.start.min(end);
    // SAFETY: the pointer covers len_q rows of 4 ints and start..end lies inside.
    unsafe { ffi::maskattn_summarize_rows(mask.as_flat().as_ptr(), start as i32, end as i32) }
}

/// Summary of the union of the rows of `a` and `b`.
pub fn merge(a: &TileSummary, b: &TileSummary) -> TileSummary {
    // SAFETY: plain values behind valid references.
    unsafe { ffi::maskattn_summary_merge(a, b) }
}

impl TileClass {
    /// From the C header's `MASKATTN_TILE_*` value.
    pub(crate) fn from_raw(raw: i32) -> Self {
        match raw as u32 {
            ffi::MASKATTN_TILE_EMPTY => TileClass::Empty,
            ffi::MASKATTN_TILE_FULL => TileClass::Full,
            _ => TileClass::Partial,
        }
    }
}

/// Class of key tile `keys` for the rows of `summary`.
pub fn classify(summary: &TileSummary, keys: std::ops::Range<usize>) -> TileClass {
    // SAFETY: reads the summary only.
    TileClass::from_raw(unsafe { ffi::maskattn_classify_key_tile(summary, keys.start as i64, keys.end as i64) })
}

/// Key tiles (indices, width `block_n`) a query tile must walk: every visible key of
/// its rows lies in them. Tiles inside may still be [`TileClass::Empty`].
pub fn key_tile_range(summary: &TileSummary, block_n: usize) -> std::ops::Range<usize> {
    let (mut begin, mut end) = (0i32, 0i32);
    // SAFETY: writes two ints we own.
    unsafe { ffi::maskattn_key_tile_range(summary, block_n as i32, &mut begin, &mut end) };
    begin as usize..end as usize
}

/// The per-element mask of a row `[s0, e0, s1, e1]`.
pub fn key_visible(row: &[i32; 4], k: usize) -> bool {
    // SAFETY: reads the four ints of the row.
    k <= i32::MAX as usize && unsafe { ffi::maskattn_key_visible(row.as_ptr(), k as i32) } != 0
}

/// Counts of tile classes over a whole mask, as a kernel with `shape` would see them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TileStats {
    /// Query tiles, `ceil(Lq / block_m)`.
    pub query_tiles: usize,
    /// Key tiles, `ceil(Lk / block_n)`.
    pub key_tiles: usize,
    /// Pairs skipped: inside the walked range and classified EMPTY, or outside it.
    pub empty: usize,
    /// Pairs computed without a mask.
    pub full: usize,
    /// Pairs computed with the per-element mask.
    pub partial: usize,
    /// Tiles inside the walked ranges: those the kernel looks at (full + partial + the
    /// empty ones it classifies and skips).
    pub walked: usize,
}

/// The class of every (query tile, key tile) pair, row-major `[query tile][key
/// tile]`, as the kernels see them: tiles outside a query tile's walked range are
/// EMPTY without being classified.
pub fn tile_classes(mask: &Mask, shape: TileShape) -> Vec<TileClass> {
    let key_tiles = mask.len_k().div_ceil(shape.block_n);
    let mut out = Vec::with_capacity(mask.len_q().div_ceil(shape.block_m) * key_tiles);
    for qt in 0..mask.len_q().div_ceil(shape.block_m) {
        let s = summarize(mask, qt * shape.block_m..(qt + 1) * shape.block_m);
        let range = key_tile_range(&s, shape.block_n);
        out.extend((0..key_tiles).map(|kt| {
            if range.contains(&kt) {
                classify(&s, kt * shape.block_n..(kt + 1) * shape.block_n)
            } else {
                TileClass::Empty
            }
        }));
    }
    out
}

impl TileStats {
    /// Classifies every (query tile, key tile) pair of the mask.
    pub fn of(mask: &Mask, shape: TileShape) -> Self {
        let query_tiles = mask.len_q().div_ceil(shape.block_m);
        let key_tiles = mask.len_k().div_ceil(shape.block_n);
        let mut st = TileStats { query_tiles, key_tiles, ..Default::default() };
        for qt in 0..query_tiles {
            let s = summarize(mask, qt * shape.block_m..(qt + 1) * shape.block_m);
            st.walked += key_tile_range(&s, shape.block_n).len();
        }
        for class in tile_classes(mask, shape) {
            match class {
                TileClass::Empty => st.empty += 1,
                TileClass::Full => st.full += 1,
                TileClass::Partial => st.partial += 1,
            }
        }
        st
    }
}

/// Query tiles in launch order: heaviest first (most key tiles to walk, ties by
/// index), so long rows start early and short ones fill the SMs at the end instead
/// of leaving them idle (causal: the bottom tiles first).
pub fn query_tile_order(mask: &Mask, shape: TileShape) -> Vec<i32> {
    let tiles = mask.len_q().div_ceil(shape.block_m);
    let work: Vec<usize> = (0..tiles)
        .map(|t| key_tile_range(&summarize(mask, t * shape.block_m..(t + 1) * shape.block_m), shape.block_n).len())
        .collect();
    let mut order: Vec<i32> = (0..tiles as i32).collect();
    order.sort_by_key(|&t| std::cmp::Reverse(work[t as usize]));
    order
}

/// The head dims the kernels were compiled for. Every multiple of 8 up to the last
/// runs in the smallest class that holds it: the kernels zero-fill the columns past
/// the real head dim on load and store only the real ones (the scale comes from the
/// real head dim). Why these four: `bench/NOTES.md`, "Head-dim classes".
pub const HEAD_DIM_CLASSES: [usize; 4] = [64, 96, 128, ffi::MASKATTN_MAX_HEAD_DIM as usize];

/// The compiled class that runs head dim `head_dim`, or [`crate::Error::Unsupported`]
/// for a head dim that is 0, not a multiple of 8 (the kernels copy 16-byte chunks) or
/// above 256.
pub fn head_dim_class(head_dim: usize) -> crate::Result<usize> {
    match HEAD_DIM_CLASSES.iter().find(|&&c| head_dim <= c) {
        Some(&class) if head_dim > 0 && head_dim % 8 == 0 => Ok(class),
        _ => Err(crate::Error::Unsupported(format!(
            "head dim {head_dim}: the kernels take multiples of 8 from 8 to {}",
            ffi::MASKATTN_MAX_HEAD_DIM
        ))),
    }
}

/// The forward kernel's tile shape for head dimension `head_dim` (the constants of
/// csrc/params.h for its class), so that tests and the launch code use the kernel's
/// tiles.
pub fn forward_tiles(head_dim: usize) -> crate::Result<TileShape> {
    let block_n = match head_dim_class(head_dim)? {
        64 => ffi::MASKATTN_FWD_BLOCK_N_D64,
        96 => ffi::MASKATTN_FWD_BLOCK_N_D96,
        128 => ffi::MASKATTN_FWD_BLOCK_N_D128,
        _ => ffi::MASKATTN_FWD_BLOCK_N_D256,
    };
    TileShape::new(ffi::MASKATTN_FWD_BLOCK_M as usize, block_n as usize)
}
