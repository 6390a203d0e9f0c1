//! The oracle: attention evaluated row by row in `f64`, for any mask.
//!
//! Every kernel is tested against it, and it is public so that users can test their
//! own code the same way. Layout `[B, L, H, D]` for Q, K, V and O, LSE `[B, Hq, Lq]`
//! in natural log; GQA by `kv_head = q_head / (Hq / Hkv)`. A row that sees no key has
//! output 0 and LSE `-inf`, never NaN.
//!
//! ```
//! use maskattn::{reference, Mask};
//! use ndarray::Array4;
//! let (b, l, h, d) = (1, 5, 2, 4);
//! let q = Array4::from_shape_fn((b, l, h, d), |(_, i, j, k)| ((i + j + k) as f32).sin());
//! let out = reference::attention(q.view(), q.view(), q.view(), &Mask::causal(l, l)?, None)?;
//! assert_eq!(out.out.shape(), &[b, l, h, d]);
//! // The first row sees only key 0: its output is v[0].
//! assert!((out.out[[0, 0, 1, 2]] - q[[0, 0, 1, 2]] as f64).abs() < 1e-12);
//! # Ok::<(), maskattn::Error>(())
//! ```

use ndarray::{Array3, Array4, ArrayView4, Axis};

use crate::error::Result;
use crate::mask::Mask;
use crate::shape::{AttnShape, Element};

mod backward;
pub use backward::{attention_backward, Gradients};

/// Attention output in `f64`: `out` is `[B, Lq, Hq, D]`, `lse` is `[B, Hq, Lq]`.
#[derive(Debug, Clone)]
pub struct AttentionOutput {
    /// `softmax(scale * Q K^T + mask) V`.
    pub out: Array4<f64>,
    /// Log-sum-exp of each row's scaled, masked scores (natural log); `-inf` for a row
    /// with no visible key.
    pub lse: Array3<f64>,
}

/// Attention with an interval [`Mask`]; `scale` defaults to `1/sqrt(D)`.
pub fn attention<T: Element>(
    q: ArrayView4<T>,
    k: ArrayView4<T>,
    v: ArrayView4<T>,
    mask: &Mask,
    scale: Option<f64>,
) -> Result<AttentionOutput> {
    let shape = AttnShape::new(q.shape(), k.shape(), v.shape(), mask)?;
    Ok(run(q, k, v, shape, shape.scale_or_default(scale)?, |_, row, keys| {
        let [s0, e0, s1, e1] = mask.intervals()[row];
        keys.extend((s0..e0).chain(s1..e1).map(|k| k as usize));
    }))
}

/// Attention with any mask given as a predicate `visible(q_head, q, k)`; O(Lq * Lk)
/// calls. Use it to check masks that are not (yet) interval masks, such as a block
/// selection per head.
pub fn attention_where<T: Element>(
    q: ArrayView4<T>,
    k: ArrayView4<T>,
    v: ArrayView4<T>,
    scale: Option<f64>,
    visible: impl Fn(usize, usize, usize) -> bool,
) -> Result<AttentionOutput> {
    let shape = AttnShape::of_qkv(q.shape(), k.shape(), v.shape())?;
    Ok(run(q, k, v, shape, shape.scale_or_default(scale)?, |h, row, keys| {
        keys.extend((0..shape.len_k).filter(|&key| visible(h, row, key)));
    }))
}

fn run<T: Element>(
    q: ArrayView4<T>,
    k: ArrayView4<T>,
    v: ArrayView4<T>,
    s: AttnShape,
    scale: f64,
    visible_keys: impl Fn(usize, usize, &mut Vec<usize>),
) -> AttentionOutput {
    let (q, k, v) = (q.mapv(T::to_f64), k.mapv(T::to_f64), v.mapv(T::to_f64));
    let mut out = Array4::<f64>::zeros((s.batch, s.len_q, s.heads_q, s.head_dim));
    let mut lse = Array3::<f64>::from_elem((s.batch, s.heads_q, s.len_q), f64::NEG_INFINITY);
    let (mut keys, mut scores) = (Vec::new(), Vec::new());
    for b in 0..s.batch {
        for h in 0..s.heads_q {
            let hk = h / s.group();
            for i in 0..s.len_q {
                keys.clear();
                visible_keys(h, i, &mut keys);
                if keys.is_empty() {
                    continue;
                }
                let qi = q.index_axis(Axis(0), b);
                let qi = qi.index_axis(Axis(0), i);
                let qi = qi.index_axis(Axis(0), h);
                scores.clear();
                scores.extend(keys.iter().map(|&j| scale * qi.dot(&k.slice(ndarray::s![b, j, hk, ..]))));
                let m = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let mut l = 0.0;
                let mut o = out.slice_mut(ndarray::s![b, i, h, ..]);
                for (&j, &sc) in keys.iter().zip(&scores) {
                    let p = (sc - m).exp();
                    l += p;
                    o.scaled_add(p, &v.slice(ndarray::s![b, j, hk, ..]));
                }
                o /= l;
                lse[[b, h, i]] = m + l.ln();
            }
        }
    }
    AttentionOutput { out, lse }
}

/// Merges attention outputs computed over disjoint key shards of the same queries
/// (e.g. with [`Mask::slice`] per shard: context parallelism, ring attention) into
/// the output over all keys: `lse = log(sum_i exp(lse_i))`,
/// `out = sum_i exp(lse_i - lse) out_i`. Shards in which a row sees no key (LSE
/// `-inf`) contribute nothing; a row that sees no key anywhere stays 0 / `-inf`.
///
/// ```
/// use maskattn::{reference, Mask};
/// let x = ndarray::Array4::<f64>::from_shape_fn((1, 6, 1, 3), |(_, l, _, d)| (l as f64 * 0.7 + d as f64).sin());
/// let mask = Mask::causal(6, 6)?;
/// let part = |k0: usize, k1: usize| {
///     let kv = x.slice(ndarray::s![.., k0..k1, .., ..]);
///     reference::attention(x.view(), kv, kv, &mask.slice(0..6, k0..k1)?, None)
/// };
/// let merged = reference::merge_partials(&[part(0, 2)?, part(2, 6)?])?;
/// let whole = reference::attention(x.view(), x.view(), x.view(), &mask, None)?;
/// assert!(merged.out.iter().zip(&whole.out).all(|(a, b)| (a - b).abs() < 1e-12));
/// # Ok::<(), maskattn::Error>(())
/// ```
pub fn merge_partials(parts: &[AttentionOutput]) -> Result<AttentionOutput> {
    let first = parts.first().ok_or_else(|| crate::error::invalid("parts", "nothing to merge"))?;
    if parts.iter().any(|p| p.out.shape() != first.out.shape() || p.lse.shape() != first.lse.shape()) {
        return Err(crate::Error::Shape("partial outputs of different shapes".into()));
    }
    let mut lse = Array3::from_elem(first.lse.raw_dim(), f64::NEG_INFINITY);
    for p in parts {
        lse.zip_mut_with(&p.lse, |acc, &x| {
            let m = acc.max(x);
            if m > f64::NEG_INFINITY {
                *acc = m + ((*acc - m).exp() + (x - m).exp()).ln();
            }
        });
    }
    let mut out = Array4::<f64>::zeros(first.out.raw_dim());
    for p in parts {
        for ((b, i, h, d), o) in out.indexed_iter_mut() {
            let (part_lse, total) = (p.lse[[b, h, i]], lse[[b, h, i]]);
            if part_lse > f64::NEG_INFINITY {
                *o += (part_lse - total).exp() * p.out[[b, i, h, d]];
            }
        }
    }
    Ok(AttentionOutput { out, lse })
}
