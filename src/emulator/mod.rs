//! A CPU emulator of the forward kernel's schedule, in `f64`.
//!
//! It is the specification of what the kernel does, step for step: query tiles in
//! [`tiles::query_tile_order`], per tile the summary of its rows, the walk over the
//! key tiles of [`tiles::key_tile_range`], EMPTY tiles skipped, FULL tiles computed
//! without a mask, PARTIAL tiles masked per element, and the online softmax in base 2
//! with the running maximum and per-tile rescaling of the accumulator. Proptests
//! check it against [`reference`](crate::reference); when the kernel's schedule
//! changes, this changes with it.

use ndarray::{s, Array1, Array2, Array3, Array4, ArrayView4, Axis};

use crate::error::Result;
use crate::mask::Mask;
use crate::reference::AttentionOutput;
use crate::shape::{AttnShape, Element};
use crate::tiles::{self, TileClass, TileShape};
use crate::xattention::{BlockSelection, BLOCK};

mod backward;
pub use backward::backward;

/// What the emulated kernel did, counted over all (batch, head, query tile).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Schedule {
    /// Key tiles loaded and computed without a mask.
    pub full: usize,
    /// Key tiles loaded and masked per element.
    pub partial: usize,
    /// Key tiles in the walked range that were classified EMPTY and not loaded.
    pub skipped: usize,
}

impl Schedule {
    /// Counts one walked tile pair of class `class`; false when it is skipped.
    fn record(&mut self, class: TileClass) -> bool {
        match class {
            TileClass::Empty => self.skipped += 1,
            TileClass::Full => self.full += 1,
            TileClass::Partial => self.partial += 1,
        }
        class != TileClass::Empty
    }
}

/// Runs the forward kernel's schedule on the CPU; `scale` defaults to `1/sqrt(D)`.
pub fn forward<T: Element>(
    q: ArrayView4<T>,
    k: ArrayView4<T>,
    v: ArrayView4<T>,
    mask: &Mask,
    scale: Option<f64>,
    tile: TileShape,
) -> Result<(AttentionOutput, Schedule)> {
    forward_block_sparse(q, k, v, mask, None, scale, tile)
}

/// [`forward`] with an XAttention block selection ANDed to the mask: a key tile whose
/// 128x128 block is not selected for the (batch, head) is skipped like an EMPTY one
/// (counted in `skipped`). With a selection the tiles must lie inside the blocks:
/// `block_m == 128` and `block_n` dividing 128, as in the kernel.
pub fn forward_block_sparse<T: Element>(
    q: ArrayView4<T>,
    k: ArrayView4<T>,
    v: ArrayView4<T>,
    mask: &Mask,
    selection: Option<&BlockSelection>,
    scale: Option<f64>,
    tile: TileShape,
) -> Result<(AttentionOutput, Schedule)> {
    let sh = AttnShape::new(q.shape(), k.shape(), v.shape(), mask)?;
    if let Some(sel) = selection {
        sel.check_shape(&sh)?;
        if tile.block_m() != BLOCK || BLOCK % tile.block_n() != 0 {
            return Err(crate::Error::Unsupported(format!(
                "block selection with {tile:?} tiles: needs {BLOCK} x a divisor of {BLOCK}"
            )));
        }
    }
    let scale_log2 = sh.scale_or_default(scale)? * std::f64::consts::LOG2_E;
    let (q, k, v) = (q.mapv(T::to_f64), k.mapv(T::to_f64), v.mapv(T::to_f64));
    let mut out = Array4::<f64>::zeros((sh.batch, sh.len_q, sh.heads_q, sh.head_dim));
    let mut lse = Array3::<f64>::zeros((sh.batch, sh.heads_q, sh.len_q));
    let mut sched = Schedule::default();
    let (bm, bn) = (tile.block_m(), tile.block_n());

    for qt in tiles::query_tile_order(mask, tile) {
        let rows = qt as usize * bm..((qt as usize + 1) * bm).min(sh.len_q);
        let summary = tiles::summarize(mask, rows.clone());
        let key_tiles = tiles::key_tile_range(&summary, bn);
        for b in 0..sh.batch {
            for h in 0..sh.heads_q {
                let hk = h / sh.group();
                let q_tile = q.slice(s![b, rows.clone(), h, ..]);
                // Per row: running max (base 2, scaled), running sum, unnormalized output.
                let mut m = Array1::<f64>::from_elem(rows.len(), f64::NEG_INFINITY);
                let mut l = Array1::<f64>::zeros(rows.len());
                let mut acc = Array2::<f64>::zeros((rows.len(), sh.head_dim));
                for kt in key_tiles.clone() {
                    let keys = kt * bn..(kt + 1) * bn;
                    let unselected =
                        selection.is_some_and(|sel| !sel.is_selected(b, h, qt as usize, keys.start / BLOCK));
                    let class = if unselected { TileClass::Empty } else { tiles::classify(&summary, keys.clone()) };
                    if !sched.record(class) {
                        continue;
                    }
                    // Keys past Lk are zero-filled by the kernel's predicated loads and
                    // masked (no interval reaches past Lk, so such tiles are PARTIAL).
                    let loaded = keys.start..keys.end.min(sh.len_k);
                    let k_tile = k.slice(s![b, loaded.clone(), hk, ..]);
                    let v_tile = v.slice(s![b, loaded.clone(), hk, ..]);
                    let mut scores = q_tile.dot(&k_tile.t()) * scale_log2;
                    if class == TileClass::Partial {
                        for (r, mut srow) in scores.axis_iter_mut(Axis(0)).enumerate() {
                            let iv = &mask.intervals()[rows.start + r];
                            for (c, x) in srow.iter_mut().enumerate() {
                                if !tiles::key_visible(iv, loaded.start + c) {
                                    *x = f64::NEG_INFINITY;
                                }
                            }
                        }
                    }
                    for (r, srow) in scores.axis_iter(Axis(0)).enumerate() {
                        let m_new = srow.iter().copied().fold(m[r], f64::max);
                        // A row with nothing visible yet keeps max -inf; subtracting 0
                        // instead of -inf keeps exp2 at 0 and away from NaN.
                        let base = if m_new == f64::NEG_INFINITY { 0.0 } else { m_new };
                        let alpha = (m[r] - base).exp2();
                        let p = srow.mapv(|x| (x - base).exp2());
                        l[r] = alpha * l[r] + p.sum();
                        let mut a = acc.row_mut(r);
                        a *= alpha;
                        a += &p.dot(&v_tile);
                        m[r] = m_new;
                    }
                }
                for (r, row) in rows.clone().enumerate() {
                    if l[r] > 0.0 {
                        out.slice_mut(s![b, row, h, ..]).assign(&(&acc.row(r) / l[r]));
                        lse[[b, h, row]] = (m[r] + l[r].log2()) * std::f64::consts::LN_2;
                    } else {
                        lse[[b, h, row]] = f64::NEG_INFINITY;
                    }
                }
            }
        }
    }
    Ok((AttentionOutput { out, lse }, sched))
}
