//! The backward pass of the oracle: dQ, dK, dV in closed form, in `f64`.

use ndarray::{s, Array4, ArrayView4};

use super::AttentionOutput;
use crate::error::{Error, Result};
use crate::mask::Mask;
use crate::shape::{AttnShape, Element};

/// Gradients of a loss with respect to Q, K and V, in `f64`.
///
/// `dq` is `[B, Lq, Hq, D]` like Q; `dk` and `dv` are `[B, Lk, Hkv, D]` like K and V:
/// with GQA/MQA each key/value head's gradient is summed over the `Hq / Hkv` query
/// heads that read it.
#[derive(Debug, Clone)]
pub struct Gradients {
    /// `dL/dQ`, `[B, Lq, Hq, D]`.
    pub dq: Array4<f64>,
    /// `dL/dK`, `[B, Lk, Hkv, D]`.
    pub dk: Array4<f64>,
    /// `dL/dV`, `[B, Lk, Hkv, D]`.
    pub dv: Array4<f64>,
}

impl Gradients {
    /// Zero gradients for `shape`.
    pub(crate) fn zeros(sh: &AttnShape) -> Self {
        let kv = (sh.batch, sh.len_k, sh.heads_kv, sh.head_dim);
        Self {
            dq: Array4::zeros((sh.batch, sh.len_q, sh.heads_q, sh.head_dim)),
            dk: Array4::zeros(kv),
            dv: Array4::zeros(kv),
        }
    }

    /// Checks the inputs of a backward pass: Q, K, V against each other and the mask, `fwd.out` and `d_out` like
    /// Q, `fwd.lse` `[B, Hq, Lq]`. Returns the shape and the resolved scale.
    pub(crate) fn check_inputs(
        q: &[usize],
        k: &[usize],
        v: &[usize],
        fwd: &AttentionOutput,
        d_out: &[usize],
        mask: &Mask,
        scale: Option<f64>,
    ) -> Result<(AttnShape, f64)> {
        let sh = AttnShape::new(q, k, v, mask)?;
        let q_dims = [sh.batch, sh.len_q, sh.heads_q, sh.head_dim];
        let lse_dims = [sh.batch, sh.heads_q, sh.len_q];
        for (name, got, want) in [
            ("out", fwd.out.shape(), &q_dims[..]),
            ("d_out", d_out, &q_dims[..]),
            ("lse", fwd.lse.shape(), &lse_dims[..]),
        ] {
            if got != want {
                let layout = if name == "lse" { "[B, Hq, Lq]" } else { "[B, Lq, Hq, D]" };
                return Err(Error::Shape(format!("{name} must be {layout} = {want:?}, got {got:?}")));
            }
        }
        Ok((sh, sh.scale_or_default(scale)?))
    }
}

/// Gradients of attention with an interval [`Mask`], given the forward pass's output
/// and log-sum-exp and the upstream gradient `d_out = dL/dO` (`[B, Lq, Hq, D]`).
///
/// `fwd` is what [`attention`](super::attention) returned, or the output and LSE of a
/// kernel converted to `f64`: O and LSE are used as given (not recomputed), as the
/// flash-attention backward does, so a kernel's backward can be checked against this
/// on the kernel's own forward results. `scale` must be the forward's; it defaults to
/// `1/sqrt(D)`.
///
/// Closed form, per query row `i` over its visible keys `j`:
/// `P_ij = exp(scale * q_i.k_j - LSE_i)`, `D_i = dO_i . O_i`,
/// `dP_ij = dO_i . v_j`, `dS_ij = P_ij (dP_ij - D_i)`, and
/// `dV = P^T dO`, `dQ = scale * dS K`, `dK = scale * dS^T Q`.
/// A row with no visible key (LSE `-inf`) contributes nothing: its `dq` is 0 and it
/// adds nothing to `dk`, `dv`; no NaN arises.
///
/// Errors ([`Error::Shape`]) when Q, K, V disagree with each other or with the mask,
/// when `fwd.out` or `d_out` is not shaped like Q, or `fwd.lse` is not `[B, Hq, Lq]`;
/// [`Error::InvalidParameter`] for a non-finite scale.
///
/// ```
/// use maskattn::{reference, Mask};
/// use ndarray::Array4;
/// let (b, l, h, d) = (1, 6, 2, 4);
/// let x = Array4::from_shape_fn((b, l, h, d), |(_, i, j, k)| ((3 * i + j + 5 * k) as f64).sin());
/// let mask = Mask::causal(l, l)?;
/// let fwd = reference::attention(x.view(), x.view(), x.view(), &mask, None)?;
/// let d_out = Array4::<f64>::ones((b, l, h, d));
/// let g = reference::attention_backward(x.view(), x.view(), x.view(), &fwd, d_out.view(), &mask, None)?;
/// assert_eq!(g.dq.shape(), &[b, l, h, d]);
/// // Each row's softmax sums to 1, so dV summed over keys is dO summed over rows.
/// assert!((g.dv.sum() - d_out.sum()).abs() < 1e-12);
/// # Ok::<(), maskattn::Error>(())
/// ```
pub fn attention_backward<T: Element, G: Element>(
    q: ArrayView4<T>,
    k: ArrayView4<T>,
    v: ArrayView4<T>,
    fwd: &AttentionOutput,
    d_out: ArrayView4<G>,
    mask: &Mask,
    scale: Option<f64>,
) -> Result<Gradients> {
    let (sh, scale) = Gradients::check_inputs(q.shape(), k.shape(), v.shape(), fwd, d_out.shape(), mask, scale)?;
    let (q, k, v) = (q.mapv(T::to_f64), k.mapv(T::to_f64), v.mapv(T::to_f64));
    let d_out = d_out.mapv(G::to_f64);
    let mut g = Gradients::zeros(&sh);
    for b in 0..sh.batch {
        for h in 0..sh.heads_q {
            let hk = h / sh.group();
            for (i, &[s0, e0, s1, e1]) in mask.intervals().iter().enumerate() {
                let lse = fwd.lse[[b, h, i]];
                if lse == f64::NEG_INFINITY {
                    continue; // no visible key: O = 0, no gradient flows
                }
                let qi = q.slice(s![b, i, h, ..]);
                let doi = d_out.slice(s![b, i, h, ..]);
                let di = doi.dot(&fwd.out.slice(s![b, i, h, ..]));
                for j in (s0..e0).chain(s1..e1).map(|j| j as usize) {
                    let kj = k.slice(s![b, j, hk, ..]);
                    let p = (scale * qi.dot(&kj) - lse).exp();
                    g.dv.slice_mut(s![b, j, hk, ..]).scaled_add(p, &doi);
                    let ds = p * (doi.dot(&v.slice(s![b, j, hk, ..])) - di);
                    g.dq.slice_mut(s![b, i, h, ..]).scaled_add(scale * ds, &kj);
                    g.dk.slice_mut(s![b, j, hk, ..]).scaled_add(scale * ds, &qi);
                }
            }
        }
    }
    Ok(g)
}
