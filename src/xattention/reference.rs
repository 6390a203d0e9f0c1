//! Sparse attention under a mask and a [`BlockSelection`], evaluated in `f64` by
//! [`crate::reference::attention_where`] one batch at a time.

use ndarray::{s, Array3, Array4, ArrayView4};

use super::BlockSelection;
use crate::error::{Error, Result};
use crate::mask::Mask;
use crate::reference::{attention_where, AttentionOutput};
use crate::shape::{AttnShape, Element};

/// Attention where key `k` is visible to query `q` of batch `b`, query head `h` iff
/// `selection.visible(mask, b, h, q, k)`: the mask AND the selected 128x128 block.
/// Shapes as in [`crate::reference::attention`]; the selection must be for
/// `[B, Hq]` and the mask's `Lq`, `Lk`. A row that sees no key gives output 0 and
/// LSE `-inf`. With [`BlockSelection::full`] (and a causal mask when the selection is
/// causal) this equals [`crate::reference::attention`].
pub fn sparse_attention<T: Element>(
    q: ArrayView4<T>,
    k: ArrayView4<T>,
    v: ArrayView4<T>,
    mask: &Mask,
    selection: &BlockSelection,
    scale: Option<f64>,
) -> Result<AttentionOutput> {
    let shape = AttnShape::new(q.shape(), k.shape(), v.shape(), mask)?;
    let want = (shape.batch, shape.heads_q, shape.len_q, shape.len_k);
    let got = (selection.batch(), selection.heads(), selection.len_q(), selection.len_k());
    if want != got {
        return Err(Error::Shape(format!(
            "the block selection is for (B, H, Lq, Lk) = {got:?} but the inputs are {want:?}"
        )));
    }
    let mut out = Array4::<f64>::zeros((shape.batch, shape.len_q, shape.heads_q, shape.head_dim));
    let mut lse = Array3::<f64>::from_elem((shape.batch, shape.heads_q, shape.len_q), f64::NEG_INFINITY);
    for b in 0..shape.batch {
        let (qb, kb, vb) =
            (q.slice(s![b..b + 1, .., .., ..]), k.slice(s![b..b + 1, .., .., ..]), v.slice(s![b..b + 1, .., .., ..]));
        let r = attention_where(qb, kb, vb, scale, |h, qi, ki| selection.visible(mask, b, h, qi, ki))?;
        out.slice_mut(s![b..b + 1, .., .., ..]).assign(&r.out);
        lse.slice_mut(s![b..b + 1, .., ..]).assign(&r.lse);
    }
    Ok(AttentionOutput { out, lse })
}
