//! XAttention on the GPU (csrc/xattn.cu): antidiagonal block scoring and block
//! selection, the two kernels whose `f64` CPU reference is [`crate::xattention`].
//!
//! - [`Gpu::xattn_block_scores`]: scores `[B, Hq, nQb, nKb]` (f32) of device Q and K,
//!   definitions 1-6 of the [`crate::xattention`] docs. Tensor cores (`mma.sync`
//!   m16n8k16, bf16/f16 inputs, f32 accumulation); the `[L/S, L/S]` logit matrix is
//!   never written: each logit is computed once and reduced on the fly to one
//!   log-sum-exp per (downsampled row, key block), kept in a scratch buffer of
//!   `4 * ceil(L_q/S) * nKb` bytes per (batch, head) (`R = 128/S` times the scores).
//!   The scratch is bounded by launching at most [`XATTN_SCRATCH_BUDGET`](super::XATTN_SCRATCH_BUDGET) bytes'
//!   worth of (batch, head) pairs at a time (always at least one pair).
//! - [`Gpu::xattn_select`]: the block selection (definition 7) of device scores, as
//!   the dense `u8[B][H][nQb][nKb]` of [`BlockSelection`]. The mass, the threshold
//!   and the kept sum are computed in `f64` in the reference's order, so the same
//!   f32 scores give exactly the reference's selection (ties included).
//! - [`Gpu::xattn_select_blocks`]: both, from host arrays to host results.
//!
//! Every input is checked before a launch (stride, tau, head dim, shapes, strides,
//! alignment, buffer bounds); a bad call is an error value.

use cudarc::driver::{CudaSlice, CudaViewMut};
use ndarray::{Array4, ArrayView4};

use super::attention::{buf_arg, DeviceMask, DeviceTensor, DeviceTensorMut};
use super::{Gpu, KernelElement};
use crate::error::Result;
use crate::launch::{self, xattn::XAttnOutput};
use crate::mask::Mask;
use crate::shape::{AttnShape, Element};
use crate::splitmix::SplitMix;
use crate::xattention::{BlockSelection, XAttnConfig};

impl Gpu {
    /// XAttention block scores `[B, Hq, ceil(Lq/128), ceil(Lk/128)]` (row-major f32)
    /// of Q `[B, Lq, Hq, D]` and K `[B, Lk, Hkv, D]` (strided, last dim contiguous;
    /// `Hkv` divides `Hq`), as [`crate::xattention::block_scores`] defines them, on
    /// this handle's stream. `D` must be 64, 96, 128 or 256 (at 256 the kernel needs
    /// 135,680 bytes of shared memory per block: an [`crate::Error::Unsupported`] on
    /// 99 KB GPUs) and `cfg.stride` 8 or 16; the whole `cfg` is validated (its `tau`
    /// is not used here). Invisible blocks score exactly 0.
    pub fn xattn_block_scores<T: KernelElement>(
        &self,
        q: &DeviceTensor<T>,
        k: &DeviceTensor<T>,
        cfg: &XAttnConfig,
    ) -> Result<CudaSlice<f32>> {
        let stream = self.stream();
        let (q, _q) = q.arg(stream);
        let (k, _k) = k.arg(stream);
        // SAFETY: q and k are live device views with their own lengths, whose guards
        // are held until after the launches are queued.
        unsafe { launch::xattn::block_scores::<Gpu, T>(self, &q, &k, cfg) }
    }

    /// XAttention block selection (definition 7 of [`crate::xattention`]) of device
    /// scores `[batch, heads, ceil(len_q/128), ceil(len_k/128)]` (row-major f32, e.g.
    /// from [`Gpu::xattn_block_scores`]), as the dense `u8[B][H][nQb][nKb]` of
    /// [`BlockSelection`] (1 = selected; every byte written). `cfg.tau` per head
    /// indexes `heads`. Scores of invisible blocks are ignored; the reference's check
    /// that the others are finite and non-negative cannot be made on device data
    /// without a copy: here a NaN or negative score counts as 0.
    pub fn xattn_select(
        &self,
        scores: &CudaSlice<f32>,
        batch: usize,
        heads: usize,
        cfg: &XAttnConfig,
        len_q: usize,
        len_k: usize,
    ) -> Result<CudaSlice<u8>> {
        let (scores, _scores) = buf_arg(scores, self.stream());
        // SAFETY: a live device buffer with its own length, whose guard is held until
        // after the launch is queued.
        unsafe { launch::xattn::select(self, scores, batch, heads, cfg, len_q, len_k) }
    }

    /// [`Gpu::xattn_select`] of host scores `[B, H, nQb, nKb]`: uploads, selects and
    /// returns the [`BlockSelection`]. On the same scores (as `f64`) it equals
    /// [`crate::xattention::select_blocks`].
    pub fn xattn_select_scores(
        &self,
        scores: ArrayView4<f32>,
        cfg: &XAttnConfig,
        len_q: usize,
        len_k: usize,
    ) -> Result<BlockSelection> {
        launch::xattn::xattn_select_scores(self, scores, cfg, len_q, len_k)
    }

    /// Both XAttention kernels on host arrays Q `[B, Lq, Hq, D]` and K
    /// `[B, Lk, Hkv, D]`: returns the block scores `[B, Hq, nQb, nKb]` and the
    /// selection (for tests, examples and one-off use; the device functions avoid
    /// the copies).
    pub fn xattn_select_blocks<T: KernelElement>(
        &self,
        q: ArrayView4<T>,
        k: ArrayView4<T>,
        cfg: &XAttnConfig,
    ) -> Result<(Array4<f32>, BlockSelection)> {
        launch::xattn::xattn_select_blocks(self, q, k, cfg)
    }

    /// XAttention end to end on the device: block scores ([`Gpu::xattn_block_scores`]),
    /// selection ([`Gpu::xattn_select`]) and block-sparse attention with the selection
    /// ANDed to `mask` ([`Gpu::attention_forward_block_sparse`]; K and V shared by the
    /// GQA group, no copies). Returns the device selection `u8 [B][Hq][nQb][nKb]`.
    #[allow(clippy::too_many_arguments)]
    pub fn xattention<T: KernelElement>(
        &self,
        q: &DeviceTensor<T>,
        k: &DeviceTensor<T>,
        v: &DeviceTensor<T>,
        cfg: &XAttnConfig,
        mask: &DeviceMask,
        out: &mut DeviceTensorMut<T>,
        lse: &mut CudaViewMut<f32>,
    ) -> Result<CudaSlice<u8>> {
        let sh = AttnShape::of_qkv(&q.layout.dims, &k.layout.dims, &v.layout.dims)?;
        let scores = self.xattn_block_scores(q, k, cfg)?;
        let selection = self.xattn_select(&scores, sh.batch, sh.heads_q, cfg, sh.len_q, sh.len_k)?;
        self.attention_forward_block_sparse(q, k, v, mask, &selection.as_view(), None, out, lse)?;
        Ok(selection)
    }

    /// [`Gpu::xattention`] from host arrays to host results.
    pub fn xattention_host<T: KernelElement>(
        &self,
        q: ArrayView4<T>,
        k: ArrayView4<T>,
        v: ArrayView4<T>,
        cfg: &XAttnConfig,
        mask: &Mask,
    ) -> Result<XAttnOutput<T>> {
        launch::xattn::xattention(self, q, k, v, cfg, mask)
    }
}

/// Synthetic Q `[B, Lq, Hq, D]` and K `[B, Lk, Hkv, D]` with the structure XAttention
/// exploits in real models, for tests and benchmarks (deterministic in `seed`; uniform
/// random inputs instead give flat, nearly dense block scores):
///
/// - **Local correlation.** Per (batch, key head) a latent `z_p` in `R^D` follows an
///   AR(1) walk along absolute positions, `z_p = rho z_{p-1} + sqrt(1 - rho^2) e_p`
///   with correlation length 1/(1 - rho) = 128 tokens and unit-variance components.
///   Queries and keys are `0.8 z_p` plus independent noise (`0.5` per component, per
///   head), so nearby tokens attend to each other: a band along the (bottom-right
///   aligned) diagonal, above the background by up to `0.64 sqrt(D)` in logit.
/// - **Sinks.** Three random directions `u_s` (unit-variance components); every query
///   carries `0.3 u_s` for all `s`, and the keys of four 16-token spans carry
///   `1.5 u_s` (`+0.45 sqrt(D)` in logit): span 0 at the start (a BOS /
///   system-prompt sink, direction 0), three at seeded positions (salient tokens,
///   directions 0-2). They draw attention from every query: vertical lines of
///   high-scoring key blocks.
///
/// Query row `i` sits at absolute position `i + Lk - Lq` (the crate's bottom-right
/// causal alignment), so `Lq != Lk` behaves like decoding with a KV cache. Values
/// are O(1) (|x| < ~8), fine for bf16 and f16. Cost O(B (Lq Hq + Lk Hkv) D).
/// With tau = 0.9 and S = 16 at D = 128 the reference keeps about 40% of the
/// causal blocks at 2K tokens and 23% at 8K (sinks, the diagonal and its
/// neighbours); uniform random inputs keep most blocks.
pub fn xattn_structured_inputs<T: Element>(shape: &AttnShape, seed: u64) -> (Array4<T>, Array4<T>) {
    let AttnShape { batch, len_q, len_k, heads_q, heads_kv, head_dim: d } = *shape;
    let group = (heads_q / heads_kv.max(1)).max(1);
    let delta = len_k as i64 - len_q as i64;
    let first = delta.min(0); // smallest absolute position
    let n_pos = (len_k as i64 - first) as usize;
    let mut rng = SplitMix(seed ^ 0x7861_7474_6e5f_7171);
    let rho: f64 = (-1.0f64 / 128.0).exp();
    let innov = (1.0 - rho * rho).sqrt();
    let (a_z, a_noise, a_probe, a_sink) = (0.8, 0.5, 0.3, 1.5);
    let span = 16usize;
    let sink_starts: Vec<(usize, usize)> =
        std::iter::once((0usize, 0usize)).chain((0..3).map(|s| ((rng.next() as usize) % len_k.max(1), s))).collect();
    let mut q = Array4::<T>::from_elem((batch, len_q, heads_q, d), T::from_f64(0.0));
    let mut k = Array4::<T>::from_elem((batch, len_k, heads_kv, d), T::from_f64(0.0));
    let mut z = vec![0.0f64; d];
    for b in 0..batch {
        for hk in 0..heads_kv {
            let dirs: Vec<Vec<f64>> = (0..3).map(|_| (0..d).map(|_| rng.unit()).collect()).collect();
            z.iter_mut().for_each(|x| *x = rng.unit());
            for pos in 0..n_pos {
                for x in z.iter_mut() {
                    *x = rho * *x + innov * rng.unit();
                }
                let abs = first + pos as i64;
                if abs >= 0 && (abs as usize) < len_k {
                    let kp = abs as usize;
                    let sinks: Vec<usize> =
                        sink_starts.iter().filter(|&&(s0, _)| kp >= s0 && kp < s0 + span).map(|&(_, s)| s).collect();
                    for c in 0..d {
                        let mut x = a_z * z[c] + a_noise * rng.unit();
                        for &s in &sinks {
                            x += a_sink * dirs[s][c];
                        }
                        k[[b, kp, hk, c]] = T::from_f64(x);
                    }
                }
                let qi = abs - delta;
                if qi >= 0 && (qi as usize) < len_q {
                    for h in hk * group..(hk + 1) * group {
                        for c in 0..d {
                            let probe: f64 = dirs.iter().map(|u| u[c]).sum::<f64>() * a_probe;
                            q[[b, qi as usize, h, c]] = T::from_f64(a_z * z[c] + a_noise * rng.unit() + probe);
                        }
                    }
                }
            }
        }
    }
    (q, k)
}

#[cfg(test)]
mod tests {
    use super::xattn_structured_inputs;
    use crate::shape::AttnShape;

    #[test]
    fn structured_inputs_are_deterministic_and_bounded() {
        let shape = AttnShape { batch: 1, len_q: 100, len_k: 300, heads_q: 4, heads_kv: 2, head_dim: 64 };
        let (q1, k1) = xattn_structured_inputs::<f64>(&shape, 3);
        let (q2, k2) = xattn_structured_inputs::<f64>(&shape, 3);
        assert_eq!((q1.shape(), k1.shape()), (&[1, 100, 4, 64][..], &[1, 300, 2, 64][..]));
        assert!(q1 == q2 && k1 == k2);
        assert!(q1.iter().chain(k1.iter()).all(|x| x.is_finite() && x.abs() < 16.0));
        // Queries are closer to the keys at their own position than to keys 150 back
        // (the local band), on average over rows.
        let dot = |i: usize, kp: usize| -> f64 {
            let (a, b) = (q1.slice(ndarray::s![0, i, 1, ..]), k1.slice(ndarray::s![0, kp, 0, ..]));
            a.iter().zip(b.iter()).map(|(x, y)| x * y).sum()
        };
        let near = (0..100).map(|i| dot(i, i + 200)).sum::<f64>() / 100.0;
        let far = (0..100).map(|i| dot(i, i + 50)).sum::<f64>() / 100.0;
        assert!(near > far, "near {near} far {far}");
    }
}
