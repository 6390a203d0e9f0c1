//! XAttention (seed 002, Xu et al. 2025): block-sparse attention whose 128x128 blocks
//! are chosen by antidiagonal scoring. This module is the `f64` CPU reference of the
//! two XAttention kernels, scoring ([`block_scores`]) and selection
//! ([`select_blocks`]), plus the sparse attention they feed ([`sparse_attention`]).
//! The GPU kernels must implement exactly the definitions below (up to fp32
//! rounding).
//!
//! # Definitions
//!
//! Inputs Q `[B, Lq, Hq, D]`, K `[B, Lk, Hkv, D]` (query head `h` reads key head
//! `h / (Hq / Hkv)`), stride `S` in {8, 16}, `R = 128 / S` downsampled positions per
//! block, `nQs = ceil(Lq / S)`, `nKs = ceil(Lk / S)`, `nQb = ceil(Lq / 128)`,
//! `nKb = ceil(Lk / 128)`, `delta = Lk - Lq` (signed).
//!
//! 1. **Padding.** Q and K are zero-padded at the end to `nQs * S` and `nKs * S`
//!    rows. Downsampled row `i < nQs` stands for queries `[i*S, i*S + S)`, column
//!    `j < nKs` for keys `[j*S, j*S + S)`; every row and column of this grid holds at
//!    least one real token (positions that are entirely padding do not exist).
//!    Padded tokens add exact zeros to the sums below; the scale is *not* changed
//!    for a partly padded row or column, and a partly padded column is a normal
//!    column that receives probability.
//! 2. **Antidiagonal logits.**
//!    `A[i, j] = sum_{t<S} Q[i*S + S-1-t] . K[j*S + t] / (S * sqrt(D))`.
//! 3. **Visibility.** Without `causal` every cell is visible. With `causal`, cell
//!    `(i, j)` is visible iff `j*S <= min(i*S + S-1, Lq-1) + delta`, i.e. iff at
//!    least one real (query, key) pair of the cell is visible under the crate's
//!    bottom-right causal mask `k <= q + delta` ([`crate::Mask::causal`]). For
//!    `Lq == Lk` this is `j <= i`, and when `delta` is a multiple of `S` it is
//!    `j <= i + delta/S` (= `j <= i + nKs - nQs`, x-attention's rule). The visible
//!    columns of a row are a prefix `0..=last(i)`.
//! 4. **Softmax** over the visible cells of each whole downsampled row. A row with
//!    no visible cell (only with `causal` and `Lq > Lk`) contributes nothing.
//! 5. **Block scores** `[B, Hq, nQb, nKb]`: the probabilities summed over the
//!    `R x R` tile of rows `[qb*R, (qb+1)*R)` and columns `[kb*R, (kb+1)*R)`. A block
//!    row sums to the number of its *valid* downsampled rows (those with a visible
//!    cell): `R`, fewer in the last block row, fewer where rows see nothing.
//! 6. **Block visibility.** Block `(qb, kb)` holds a visible cell iff
//!    `kb*128 <= q_last(qb) + delta` with `q_last(qb) = min((qb+1)*128, Lq) - 1`,
//!    which is exactly "the token-level causal mask has a visible pair in the
//!    block". So the visible blocks of a block row are a prefix `0..V(qb)` and
//!    invisible blocks score 0. Without `causal` every block is visible.
//! 7. **Selection**, per (batch, head, query block) with `V = V(qb) > 0` (a row with
//!    `V = 0` selects nothing): `mass = sum_{kb<V} score[kb]` (ascending `kb`),
//!    `required = tau[h] * mass`. Forced: key block 0 (sink) and, with `causal`,
//!    the diagonal block `V - 1` (the block of the last visible key of the block's
//!    last query row; `qb` itself when `Lq == Lk`); `kept` starts as their scores'
//!    sum. The other visible blocks are then visited by descending score, ties to
//!    the lower index: while `kept < required` the next one is selected and added
//!    (so the block that crosses the threshold is kept). Invisible blocks are never
//!    selected, and their scores are ignored. The result is monotone in `tau`.
//!
//! # Differences from mit-han-lab/x-attention (`xattn_estimate`, `find_blocks_chunked`)
//!
//! - x-attention pads Q and K to a multiple of its chunk size (>= 2048 tokens) and
//!   aligns causality on the *padded* block counts (`k_block_num - q_block_num`),
//!   which is bottom-right only when `Lk - Lq` is a multiple of the chunk; it
//!   asserts `Lk >= Lq`. Here alignment is rule 3 for any lengths.
//! - Without `causal` x-attention masks no padded key column (Triton and PyTorch
//!   paths), so zero-padded keys absorb probability; here they do not exist.
//!   Its PyTorch path masks only wholly padded columns, as here.
//! - Without `causal` x-attention forces no block; here block 0 is always kept.
//!   (Its `keep_sink` option sets query block 0's whole row, not key block 0.)
//! - When only one block is forced (query block 0 under causality), x-attention's
//!   cumulative sum is shifted by one entry and always keeps the best other block;
//!   its causal post-pass then drops it (it is above the diagonal). Its ties follow
//!   `torch.sort`, which is not stable; here ties go to the lower index.
//! - x-attention keeps logits and block sums in the input dtype (bf16) and
//!   softmaxes in fp32; here everything is `f64`. It has no GQA (`Hq == Hkv`).
//!
//! # Example
//!
//! ```
//! use maskattn::xattention::{block_scores, select_blocks, sparse_attention, Tau, XAttnConfig};
//! use maskattn::Mask;
//! use ndarray::Array4;
//!
//! let (b, l, h, d) = (1, 300, 2, 8);
//! let q = Array4::from_shape_fn((b, l, h, d), |(_, i, j, k)| ((i * 7 + j * 3 + k) as f32).sin());
//! let cfg = XAttnConfig { stride: 8, tau: Tau::Scalar(0.9), causal: true };
//! let scores = block_scores(q.view(), q.view(), &cfg)?;
//! assert_eq!(scores.shape(), &[1, 2, 3, 3]);
//! // Block row 1 holds 16 downsampled rows, each with softmax mass 1.
//! assert!((scores.slice(ndarray::s![0, 0, 1, ..]).sum() - 16.0).abs() < 1e-9);
//! let sel = select_blocks(scores.view(), &cfg, l, l)?;
//! assert!(sel.is_selected(0, 1, 2, 0) && sel.is_selected(0, 1, 2, 2)); // sink and diagonal
//! assert!(!sel.is_selected(0, 1, 0, 1)); // above the diagonal
//! let out = sparse_attention(q.view(), q.view(), q.view(), &Mask::causal(l, l)?, &sel, None)?;
//! assert_eq!(out.out.shape(), &[b, l, h, d]);
//! # Ok::<(), maskattn::Error>(())
//! ```

pub mod reference;

use std::cmp::Ordering;

use ndarray::{s, Array2, Array4, ArrayView4};

use crate::error::{invalid, Error, Result};
use crate::mask::Mask;
use crate::shape::{AttnShape, Element};

pub use reference::sparse_attention;

/// Block size of the selection, in tokens (both queries and keys).
pub const BLOCK: usize = 128;

/// The supported antidiagonal strides.
pub const STRIDES: [usize; 2] = [8, 16];

/// The selection threshold: one for all heads, or one per query head.
#[derive(Debug, Clone, PartialEq)]
pub enum Tau {
    /// The same threshold for every head.
    Scalar(f64),
    /// One threshold per query head (length `Hq`).
    PerHead(Vec<f64>),
}

impl Tau {
    /// The threshold of query head `h` (the last one if `h` is out of range).
    pub fn for_head(&self, h: usize) -> f64 {
        match self {
            Tau::Scalar(t) => *t,
            Tau::PerHead(v) => v.get(h).or(v.last()).copied().unwrap_or(f64::NAN),
        }
    }
}

impl From<f64> for Tau {
    fn from(t: f64) -> Self {
        Tau::Scalar(t)
    }
}

/// XAttention parameters. The block size is fixed at [`BLOCK`] = 128.
#[derive(Debug, Clone, PartialEq)]
pub struct XAttnConfig {
    /// Antidiagonal stride `S`, 8 or 16.
    pub stride: usize,
    /// Kept fraction of each block row's score mass, in `(0, 1]`.
    pub tau: Tau,
    /// Causal (bottom-right aligned) scoring and selection.
    pub causal: bool,
}

impl XAttnConfig {
    /// Checks the stride and every threshold (a per-head list must not be empty).
    pub fn validate(&self) -> Result<()> {
        if !STRIDES.contains(&self.stride) {
            return Err(invalid("stride", format!("{} is not 8 or 16", self.stride)));
        }
        let check = |t: f64| {
            if t.is_finite() && t > 0.0 && t <= 1.0 {
                Ok(())
            } else {
                Err(invalid("tau", format!("{t} is not in (0, 1]")))
            }
        };
        match &self.tau {
            Tau::Scalar(t) => check(*t),
            Tau::PerHead(v) if v.is_empty() => Err(invalid("tau", "the per-head list is empty")),
            Tau::PerHead(v) => v.iter().try_for_each(|&t| check(t)),
        }
    }

    /// [`XAttnConfig::validate`], and a per-head `tau` must have one value per query head.
    pub fn validate_heads(&self, heads_q: usize) -> Result<()> {
        self.validate()?;
        match &self.tau {
            Tau::PerHead(v) if v.len() != heads_q => {
                Err(invalid("tau", format!("{} per-head values for {heads_q} query heads", v.len())))
            }
            _ => Ok(()),
        }
    }
}

/// Number of visible key blocks (a prefix `0..V`) of query block `qb` (definition 6).
fn visible_key_blocks(len_q: usize, len_k: usize, causal: bool, qb: usize) -> usize {
    let nkb = len_k.div_ceil(BLOCK);
    if !causal {
        return nkb;
    }
    let q_last = ((qb + 1) * BLOCK).min(len_q) as i64 - 1;
    let last_key = q_last + len_k as i64 - len_q as i64;
    if last_key < 0 {
        0
    } else {
        (last_key as usize / BLOCK + 1).min(nkb)
    }
}

/// Last visible downsampled column of downsampled row `i` (definition 3).
fn last_visible_column(stride: usize, len_q: usize, len_k: usize, causal: bool, i: usize) -> Option<usize> {
    let nks = len_k.div_ceil(stride);
    if !causal {
        return Some(nks - 1);
    }
    let q_hi = (i * stride + stride - 1).min(len_q - 1) as i64;
    let key = q_hi + len_k as i64 - len_q as i64;
    (key >= 0).then(|| (key as usize / stride).min(nks - 1))
}

/// Antidiagonal block scores `[B, Hq, ceil(Lq/128), ceil(Lk/128)]` in `f64` (module
/// docs, definitions 1-6). `q` is `[B, Lq, Hq, D]`, `k` is `[B, Lk, Hkv, D]`; `tau`
/// is not used but the whole config is validated.
pub fn block_scores<T: Element>(q: ArrayView4<T>, k: ArrayView4<T>, config: &XAttnConfig) -> Result<Array4<f64>> {
    let shape = AttnShape::of_qkv(q.shape(), k.shape(), k.shape())?;
    config.validate_heads(shape.heads_q)?;
    let AttnShape { batch, len_q, len_k, heads_q, heads_kv, head_dim: d } = shape;
    let st = config.stride;
    let r = BLOCK / st;
    let (nqs, nks) = (len_q.div_ceil(st), len_k.div_ceil(st));
    let (nqb, nkb) = (len_q.div_ceil(BLOCK), len_k.div_ceil(BLOCK));
    let scale = 1.0 / (st as f64 * (d as f64).sqrt());
    let (q, k) = (q.mapv(T::to_f64), k.mapv(T::to_f64));
    let mut out = Array4::<f64>::zeros((batch, heads_q, nqb, nkb));
    let mut p = Vec::new();
    for b in 0..batch {
        for hk in 0..heads_kv {
            // kr[j, t*D + c] = K[j*S + t, c], zero past Lk.
            let kr = Array2::from_shape_fn((nks, st * d), |(j, x)| {
                let pos = j * st + x / d;
                if pos < len_k {
                    k[[b, pos, hk, x % d]]
                } else {
                    0.0
                }
            });
            for h in hk * shape.group()..(hk + 1) * shape.group() {
                // qr[i, t*D + c] = Q[i*S + S-1-t, c], zero past Lq.
                let qr = Array2::from_shape_fn((nqs, st * d), |(i, x)| {
                    let pos = i * st + st - 1 - x / d;
                    if pos < len_q {
                        q[[b, pos, h, x % d]]
                    } else {
                        0.0
                    }
                });
                for qb in 0..nqb {
                    let rows = qb * r..((qb + 1) * r).min(nqs);
                    let Some(cols) = last_visible_column(st, len_q, len_k, config.causal, rows.end - 1) else {
                        continue;
                    };
                    let logits = qr.slice(s![rows.clone(), ..]).dot(&kr.slice(s![..=cols, ..]).t());
                    for (ri, i) in rows.enumerate() {
                        let Some(last) = last_visible_column(st, len_q, len_k, config.causal, i) else {
                            continue;
                        };
                        p.clear();
                        p.extend(logits.slice(s![ri, ..=last]).iter().map(|&a| a * scale));
                        let m = p.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                        let mut z = 0.0;
                        for x in p.iter_mut() {
                            *x = (*x - m).exp();
                            z += *x;
                        }
                        let mut dst = out.slice_mut(s![b, h, qb, ..]);
                        for (j, &x) in p.iter().enumerate() {
                            dst[j / r] += x / z;
                        }
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Block selection from scores `[B, H, ceil(Lq/128), ceil(Lk/128)]` (module docs,
/// definitions 6-7). The scores must be finite and non-negative; those of invisible
/// blocks are ignored. `tau` per head indexes the scores' head axis.
pub fn select_blocks(
    scores: ArrayView4<f64>,
    config: &XAttnConfig,
    len_q: usize,
    len_k: usize,
) -> Result<BlockSelection> {
    let &[batch, heads, nqb, nkb] = scores.shape() else {
        return Err(Error::Shape(format!("scores must be [B, H, nQb, nKb], got {:?}", scores.shape())));
    };
    config.validate_heads(heads)?;
    let mut sel = BlockSelection::empty(batch, heads, len_q, len_k, config.causal)?;
    if (nqb, nkb) != (sel.num_q_blocks(), sel.num_k_blocks()) {
        return Err(Error::Shape(format!(
            "scores have {nqb} x {nkb} blocks but Lq={len_q}, Lk={len_k} need {} x {}",
            sel.num_q_blocks(),
            sel.num_k_blocks()
        )));
    }
    if let Some(bad) = scores.iter().find(|x| !(x.is_finite() && **x >= 0.0)) {
        return Err(invalid("scores", format!("{bad} is not a finite non-negative number")));
    }
    let mut order = Vec::with_capacity(nkb);
    for b in 0..batch {
        for h in 0..heads {
            let tau = config.tau.for_head(h);
            for qb in 0..nqb {
                let v = visible_key_blocks(len_q, len_k, config.causal, qb);
                if v == 0 {
                    continue;
                }
                let row = scores.slice(s![b, h, qb, ..v]);
                let required = tau * row.iter().sum::<f64>();
                let diag = if config.causal { v - 1 } else { 0 };
                let base = sel.offset(b, h, qb);
                sel.bits[base] = 1;
                let mut kept = row[0];
                if diag != 0 {
                    sel.bits[base + diag] = 1;
                    kept += row[diag];
                }
                order.clear();
                order.extend((1..v).filter(|&j| j != diag));
                order.sort_by(|&x, &y| row[y].partial_cmp(&row[x]).unwrap_or(Ordering::Equal).then(x.cmp(&y)));
                for &j in &order {
                    if kept >= required {
                        break;
                    }
                    sel.bits[base + j] = 1;
                    kept += row[j];
                }
            }
        }
    }
    Ok(sel)
}

/// Selected 128x128 blocks per (batch, query head): a dense byte array
/// `u8[B][H][nQb][nKb]`, row-major, 1 = selected, 0 = not (`nQb = ceil(Lq/128)`,
/// `nKb = ceil(Lk/128)`), as [`BlockSelection::as_bytes`] gives it to a kernel.
/// Invisible blocks (definition 6 of the module docs, from `causal`) are never set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockSelection {
    batch: usize,
    heads: usize,
    len_q: usize,
    len_k: usize,
    causal: bool,
    bits: Vec<u8>,
}

impl BlockSelection {
    fn empty(batch: usize, heads: usize, len_q: usize, len_k: usize, causal: bool) -> Result<Self> {
        for (what, n) in [("batch", batch), ("heads", heads), ("len_q", len_q), ("len_k", len_k)] {
            if n == 0 {
                return Err(invalid(what, "must be >= 1"));
            }
        }
        let n = [heads, len_q.div_ceil(BLOCK), len_k.div_ceil(BLOCK)]
            .into_iter()
            .try_fold(batch, |acc, x| acc.checked_mul(x))
            .ok_or_else(|| invalid("block selection size", "overflows"))?;
        Ok(Self { batch, heads, len_q, len_k, causal, bits: vec![0; n] })
    }

    fn offset(&self, b: usize, h: usize, qb: usize) -> usize {
        ((b * self.heads + h) * self.num_q_blocks() + qb) * self.num_k_blocks()
    }

    /// Selection from a predicate `f(b, h, qb, kb)`; invisible blocks are left out
    /// whatever `f` says.
    pub fn from_fn(
        batch: usize,
        heads: usize,
        len_q: usize,
        len_k: usize,
        causal: bool,
        f: impl Fn(usize, usize, usize, usize) -> bool,
    ) -> Result<Self> {
        let mut sel = Self::empty(batch, heads, len_q, len_k, causal)?;
        for b in 0..batch {
            for h in 0..heads {
                for qb in 0..sel.num_q_blocks() {
                    let base = sel.offset(b, h, qb);
                    for kb in 0..visible_key_blocks(len_q, len_k, causal, qb) {
                        sel.bits[base + kb] = u8::from(f(b, h, qb, kb));
                    }
                }
            }
        }
        Ok(sel)
    }

    /// Every visible block selected (dense attention under the mask).
    pub fn full(batch: usize, heads: usize, len_q: usize, len_k: usize, causal: bool) -> Result<Self> {
        Self::from_fn(batch, heads, len_q, len_k, causal, |_, _, _, _| true)
    }

    /// From the `u8[B][H][nQb][nKb]` layout (e.g. a kernel's output). Values must be 0
    /// or 1 and invisible blocks 0.
    pub fn from_bytes(
        batch: usize,
        heads: usize,
        len_q: usize,
        len_k: usize,
        causal: bool,
        bytes: Vec<u8>,
    ) -> Result<Self> {
        let mut sel = Self::empty(batch, heads, len_q, len_k, causal)?;
        if bytes.len() != sel.bits.len() {
            return Err(Error::Shape(format!("{} selection bytes, expected {}", bytes.len(), sel.bits.len())));
        }
        sel.bits = bytes;
        let (nqb, nkb) = (sel.num_q_blocks(), sel.num_k_blocks());
        for (n, &x) in sel.bits.iter().enumerate() {
            let (qb, kb) = ((n / nkb) % nqb, n % nkb);
            if x > 1 || (x == 1 && !sel.is_block_visible(qb, kb)) {
                return Err(invalid("block selection", format!("byte {n} is {x} for block ({qb}, {kb})")));
            }
        }
        Ok(sel)
    }

    /// Batch size `B`.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Query heads `H`.
    pub fn heads(&self) -> usize {
        self.heads
    }

    /// Query length `Lq`.
    pub fn len_q(&self) -> usize {
        self.len_q
    }

    /// Key length `Lk`.
    pub fn len_k(&self) -> usize {
        self.len_k
    }

    /// Whether block visibility is causal (bottom-right aligned).
    pub fn causal(&self) -> bool {
        self.causal
    }

    /// `nQb = ceil(Lq / 128)`.
    pub fn num_q_blocks(&self) -> usize {
        self.len_q.div_ceil(BLOCK)
    }

    /// `nKb = ceil(Lk / 128)`.
    pub fn num_k_blocks(&self) -> usize {
        self.len_k.div_ceil(BLOCK)
    }

    /// Checks that the selection is for attention of shape `sh` (batch, query heads,
    /// lengths): what a kernel needs before ANDing it with a mask.
    pub fn check_shape(&self, sh: &AttnShape) -> Result<()> {
        if (self.batch, self.heads, self.len_q, self.len_k) == (sh.batch, sh.heads_q, sh.len_q, sh.len_k) {
            return Ok(());
        }
        Err(Error::Shape(format!(
            "the selection is for B={}, H={}, Lq={}, Lk={}; the inputs have B={}, Hq={}, Lq={}, Lk={}",
            self.batch, self.heads, self.len_q, self.len_k, sh.batch, sh.heads_q, sh.len_q, sh.len_k
        )))
    }

    /// Does block `(qb, kb)` hold a visible (query, key) pair (module docs, definition 6)?
    pub fn is_block_visible(&self, qb: usize, kb: usize) -> bool {
        qb < self.num_q_blocks() && kb < visible_key_blocks(self.len_q, self.len_k, self.causal, qb)
    }

    /// Is block `(qb, kb)` of batch `b`, head `h` selected? False out of range.
    pub fn is_selected(&self, b: usize, h: usize, qb: usize, kb: usize) -> bool {
        b < self.batch
            && h < self.heads
            && qb < self.num_q_blocks()
            && kb < self.num_k_blocks()
            && self.bits[self.offset(b, h, qb) + kb] != 0
    }

    /// The bytes of one block row (`nKb` values).
    pub fn row(&self, b: usize, h: usize, qb: usize) -> &[u8] {
        let base = self.offset(b, h, qb);
        &self.bits[base..base + self.num_k_blocks()]
    }

    /// The whole `u8[B][H][nQb][nKb]` array.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bits
    }

    /// Number of selected blocks over all batches and heads.
    pub fn count(&self) -> usize {
        self.bits.iter().filter(|&&x| x != 0).count()
    }

    /// Number of visible blocks over all batches and heads.
    pub fn visible_blocks(&self) -> usize {
        let per_head: usize =
            (0..self.num_q_blocks()).map(|qb| visible_key_blocks(self.len_q, self.len_k, self.causal, qb)).sum();
        per_head * self.batch * self.heads
    }

    /// Selected blocks / visible blocks (all selected blocks are visible).
    pub fn density(&self) -> f64 {
        match self.visible_blocks() {
            0 => 0.0,
            v => self.count() as f64 / v as f64,
        }
    }

    /// Is key `k` visible to query `q` of batch `b`, head `h`: visible under `mask`
    /// and in a selected block?
    pub fn visible(&self, mask: &Mask, b: usize, h: usize, q: usize, k: usize) -> bool {
        mask.is_visible(q, k) && self.is_selected(b, h, q / BLOCK, k / BLOCK)
    }
}
