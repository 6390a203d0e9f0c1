//! A CPU emulator of the backward kernel's schedule, in `f64`.

use std::ops::Range;

use ndarray::{s, Array2, Array3, Array4, ArrayView4, Axis};

use super::Schedule;
use crate::error::Result;
use crate::mask::Mask;
use crate::reference::{AttentionOutput, Gradients};
use crate::shape::Element;
use crate::tiles::{self, TileClass, TileShape, TileSummary};

/// Runs the backward kernel's schedule on the CPU: the gradients of attention with an
/// interval [`Mask`] and what the kernel did. Inputs as for
/// [`reference::attention_backward`](crate::reference::attention_backward), plus the
/// kernel's tile sizes (`block_m` query rows by `block_n` keys).
///
/// The schedule, FlashAttention-2's backward (the forward transposed):
///
/// 1. Preprocessing (FA2's `dot(dO, O)` kernel): `D_i = dO_i . O_i` per (batch, query
///    head, row), and the LSE turned to base 2. A row with no visible key has LSE
///    `-inf`; it is replaced by `+inf` so that `exp2(S - LSE)` is 0 for it (FA2's
///    forward stores `+inf` there; ours stores `-inf` as the design asks, and
///    `-inf - -inf` would be NaN).
/// 2. Which query tiles a key tile walks: the hull of the query tiles whose forward
///    [`tiles::key_tile_range`] contains it (a host pre-pass over the query-tile
///    summaries, the transpose of the forward's walk). Query tiles inside the hull may
///    still be EMPTY for this key tile.
/// 3. One program per (batch, key/value head, key tile) loads its K and V tile once,
///    and for each query head of the GQA group and each query tile of the walk
///    classifies the pair with [`tiles::classify`] on that query tile's
///    [`tiles::summarize`]: EMPTY is skipped without loading Q, dO, LSE or D; FULL is
///    computed without a per-element mask; PARTIAL applies [`tiles::key_visible`].
///    For a computed pair, in base 2 like the forward:
///    `P = exp2(scale * log2(e) * Q K^T - LSE * log2(e))`, `dV += P^T dO`,
///    `dP = dO V^T`, `dS = P * (dP - D)`, `dK += scale * dS^T Q`, and
///    `dQ += scale * dS K` into a dQ accumulator.
/// 4. dK and dV live in the program's accumulators for all its query tiles and heads
///    (no atomics, GQA summed in place) and are written once. dQ gets contributions
///    from every key tile: in the kernel these are `f32` atomic adds into a
///    `[B, Hq, Lq, D]` accumulator, converted to the output type by a last pass (or a
///    separate dQ pass over query tiles); the emulator just sums in `f64`.
///
/// The [`Schedule`] counts (query tile, key tile) pairs over all (batch, query head,
/// key tile): `full` and `partial` query tiles computed, `skipped` the EMPTY ones
/// inside the walked hulls. `full` and `partial` equal the forward's (the same
/// non-empty pairs, classified the same); `skipped` may differ.
///
/// Errors as [`reference::attention_backward`](crate::reference::attention_backward),
/// and [`Error::InvalidParameter`](crate::Error::InvalidParameter) for a zero (or
/// over `i32::MAX`) tile size.
///
/// ```
/// use maskattn::{emulator, reference, tiles::TileShape, Mask};
/// use ndarray::Array4;
/// let (b, l, h, d) = (1, 40, 2, 8);
/// let x = Array4::from_shape_fn((b, l, h, d), |(_, i, j, k)| ((3 * i + j + 5 * k) as f64).sin());
/// let mask = Mask::causal(l, l)?;
/// let fwd = reference::attention(x.view(), x.view(), x.view(), &mask, None)?;
/// let d_out = x.mapv(f64::cos);
/// let tile = TileShape::new(16, 16).unwrap();
/// let (g, sched) = emulator::backward(x.view(), x.view(), x.view(), &fwd, d_out.view(), &mask, None, tile)?;
/// let want = reference::attention_backward(x.view(), x.view(), x.view(), &fwd, d_out.view(), &mask, None)?;
/// assert!((&g.dk - &want.dk).iter().all(|e| e.abs() < 1e-12));
/// // Per head: 3 diagonal tiles masked, 3 below the diagonal computed without a mask.
/// assert_eq!((sched.partial, sched.full, sched.skipped), (3 * h, 3 * h, 0));
/// # Ok::<(), maskattn::Error>(())
/// ```
#[allow(clippy::too_many_arguments)]
pub fn backward<T: Element, G: Element>(
    q: ArrayView4<T>,
    k: ArrayView4<T>,
    v: ArrayView4<T>,
    fwd: &AttentionOutput,
    d_out: ArrayView4<G>,
    mask: &Mask,
    scale: Option<f64>,
    tile: TileShape,
) -> Result<(Gradients, Schedule)> {
    let (sh, scale) = Gradients::check_inputs(q.shape(), k.shape(), v.shape(), fwd, d_out.shape(), mask, scale)?;
    let scale_log2 = scale * std::f64::consts::LOG2_E;
    let (q, k, v) = (q.mapv(T::to_f64), k.mapv(T::to_f64), v.mapv(T::to_f64));
    let d_out = d_out.mapv(G::to_f64);
    let (bm, bn) = (tile.block_m(), tile.block_n());

    // 1. Preprocessing: D = rowsum(dO * O) and the base-2 LSE, both [B, Hq, Lq].
    let delta = Array3::from_shape_fn((sh.batch, sh.heads_q, sh.len_q), |(b, h, i)| {
        d_out.slice(s![b, i, h, ..]).dot(&fwd.out.slice(s![b, i, h, ..]))
    });
    let lse2 = fwd.lse.mapv(|x| if x == f64::NEG_INFINITY { f64::INFINITY } else { x * std::f64::consts::LOG2_E });

    // 2. Query-tile summaries and, per key tile, the query tiles to walk.
    let summaries: Vec<TileSummary> =
        (0..sh.len_q.div_ceil(bm)).map(|qt| tiles::summarize(mask, qt * bm..(qt + 1) * bm)).collect();
    let walks = query_tile_walks(&summaries, sh.len_k.div_ceil(bn), bn);

    // 3. One program per (batch, kv head, key tile).
    let mut g = Gradients::zeros(&sh);
    let mut dq_acc = Array4::<f64>::zeros((sh.batch, sh.heads_q, sh.len_q, sh.head_dim));
    let mut sched = Schedule::default();
    for b in 0..sh.batch {
        for hk in 0..sh.heads_kv {
            for (kt, walk) in walks.iter().enumerate() {
                let keys = kt * bn..(kt + 1) * bn;
                // Keys past Lk are zero-filled by predicated loads and masked (the last
                // tile is never FULL); the emulator keeps only the real ones.
                let loaded = keys.start..keys.end.min(sh.len_k);
                let k_tile = k.slice(s![b, loaded.clone(), hk, ..]);
                let v_tile = v.slice(s![b, loaded.clone(), hk, ..]);
                let mut dk_tile = Array2::<f64>::zeros((loaded.len(), sh.head_dim));
                let mut dv_tile = Array2::<f64>::zeros((loaded.len(), sh.head_dim));
                for h in hk * sh.group()..(hk + 1) * sh.group() {
                    for qt in walk.clone() {
                        let class = tiles::classify(&summaries[qt], keys.clone());
                        if !sched.record(class) {
                            continue;
                        }
                        let rows = qt * bm..((qt + 1) * bm).min(sh.len_q);
                        let q_tile = q.slice(s![b, rows.clone(), h, ..]);
                        let do_tile = d_out.slice(s![b, rows.clone(), h, ..]);
                        // P, recomputed from the forward's LSE in base 2; masked scores
                        // are -inf as in the forward, so exp2(-inf - LSE) = 0 (also for
                        // the +inf LSE of rows with no visible key).
                        let mut p = q_tile.dot(&k_tile.t()) * scale_log2;
                        for (r, mut prow) in p.axis_iter_mut(Axis(0)).enumerate() {
                            let row = rows.start + r;
                            let iv = &mask.intervals()[row];
                            let l2 = lse2[[b, h, row]];
                            for (c, x) in prow.iter_mut().enumerate() {
                                if class == TileClass::Partial && !tiles::key_visible(iv, loaded.start + c) {
                                    *x = f64::NEG_INFINITY;
                                }
                                *x = (*x - l2).exp2();
                            }
                        }
                        dv_tile += &p.t().dot(&do_tile);
                        // dS = P * (dP - D), dP = dO V^T.
                        let mut ds = do_tile.dot(&v_tile.t());
                        for (r, mut dsrow) in ds.axis_iter_mut(Axis(0)).enumerate() {
                            let d = delta[[b, h, rows.start + r]];
                            dsrow.zip_mut_with(&p.row(r), |x, &pv| *x = pv * (*x - d));
                        }
                        dk_tile.scaled_add(scale, &ds.t().dot(&q_tile));
                        // The kernel's f32 atomics into the dQ accumulator.
                        dq_acc.slice_mut(s![b, h, rows, ..]).scaled_add(scale, &ds.dot(&k_tile));
                    }
                }
                // 4. dK, dV written once per program.
                g.dk.slice_mut(s![b, loaded.clone(), hk, ..]).assign(&dk_tile);
                g.dv.slice_mut(s![b, loaded, hk, ..]).assign(&dv_tile);
            }
        }
    }
    // The dQ conversion pass: accumulator [B, Hq, Lq, D] to the output layout.
    g.dq.assign(&dq_acc.view().permuted_axes([0, 2, 1, 3]));
    Ok((g, sched))
}

/// For each of `key_tiles` key tiles, the query tiles the backward walks: the hull of
/// those whose forward key-tile range (see [`tiles::key_tile_range`]) contains it;
/// empty when no query tile does.
fn query_tile_walks(summaries: &[TileSummary], key_tiles: usize, block_n: usize) -> Vec<Range<usize>> {
    let mut walks: Vec<Option<Range<usize>>> = vec![None; key_tiles];
    for (qt, summary) in summaries.iter().enumerate() {
        for w in &mut walks[tiles::key_tile_range(summary, block_n)] {
            *w = Some(w.as_ref().map_or(qt, |w| w.start)..qt + 1);
        }
    }
    walks.into_iter().map(|w| w.unwrap_or(0..0)).collect()
}
