//! The host-array API of the kernels, one trait for both backends: the GPU
//! ([`crate::cuda::Gpu`]) and the CPU backend ([`crate::cpu::CpuBackend`], the same
//! kernels executed on the host). Code written against [`Kernels`] runs its kernels
//! on a GPU in production and on the CPU backend in tests on machines without one.
//!
//! ```
//! # #[cfg(feature = "cpu")]
//! # fn main() -> maskattn::Result<()> {
//! use maskattn::{Kernels, Mask};
//! use ndarray::Array4;
//!
//! fn layer<K: Kernels>(kernels: &K) -> maskattn::Result<Array4<half::bf16>> {
//!     let x = Array4::from_elem((1, 100, 2, 64), half::bf16::from_f32(0.5));
//!     let (out, _lse) = kernels.attention(x.view(), x.view(), x.view(), &Mask::causal(100, 100)?, None)?;
//!     Ok(out)
//! }
//! let out = layer(&maskattn::cpu::CpuBackend::new())?;
//! assert!((out[[0, 99, 1, 3]].to_f32() - 0.5).abs() < 1e-2);
//! # Ok(()) }
//! # #[cfg(not(feature = "cpu"))]
//! # fn main() {}
//! ```

use ndarray::{Array3, Array4, ArrayView4};

use crate::error::Result;
use crate::launch::xattn::XAttnOutput;
use crate::launch::KernelElement;
use crate::mask::Mask;
use crate::rope::DualRope;
use crate::tiles::{TileClass, TileShape};
use crate::xattention::{BlockSelection, XAttnConfig};

/// Upload, launch, download: every kernel family on `[B, L, H, D]` host arrays.
/// Inputs are checked before any launch (typed errors); scales default to
/// `1/sqrt(D)` and must be positive and finite.
pub trait Kernels {
    /// `softmax(scale * q k^T + mask) v` and the LSE `[B, Hq, Lq]` (natural log; `-inf`
    /// and a zero row where a query sees no key). K and V may have fewer heads (GQA).
    fn attention<T: KernelElement>(
        &self,
        q: ArrayView4<T>,
        k: ArrayView4<T>,
        v: ArrayView4<T>,
        mask: &Mask,
        scale: Option<f32>,
    ) -> Result<(Array4<T>, Array3<f32>)>;

    /// [`Kernels::attention`] with an XAttention block selection ANDed to the mask.
    fn attention_block_sparse<T: KernelElement>(
        &self,
        q: ArrayView4<T>,
        k: ArrayView4<T>,
        v: ArrayView4<T>,
        mask: &Mask,
        selection: &BlockSelection,
        scale: Option<f32>,
    ) -> Result<(Array4<T>, Array3<f32>)>;

    /// The forward, then the backward with upstream gradient `d_out`: `(dq, dk, dv)`.
    /// `deterministic` computes dQ without atomics (bit-reproducible).
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    fn attention_grad<T: KernelElement>(
        &self,
        q: ArrayView4<T>,
        k: ArrayView4<T>,
        v: ArrayView4<T>,
        d_out: ArrayView4<T>,
        mask: &Mask,
        scale: Option<f32>,
        deterministic: bool,
    ) -> Result<(Array4<T>, Array4<T>, Array4<T>)>;

    /// The naive baseline (S in memory, masked softmax, P V): `(out, lse)`.
    fn naive_attention_host<T: KernelElement>(
        &self,
        q: ArrayView4<T>,
        k: ArrayView4<T>,
        v: ArrayView4<T>,
        mask: &Mask,
        scale: Option<f32>,
    ) -> Result<(Array4<T>, Array3<f32>)>;

    /// Temporal-aware dual RoPE of `x` at `positions` (one per row).
    fn dual_rope<T: KernelElement>(&self, x: ArrayView4<T>, positions: &[f64], rope: &DualRope) -> Result<Array4<T>>;

    /// [`Kernels::dual_rope`] of Q and K in one launch.
    fn dual_rope_qk<T: KernelElement>(
        &self,
        q: ArrayView4<T>,
        k: ArrayView4<T>,
        positions: &[f64],
        rope: &DualRope,
    ) -> Result<(Array4<T>, Array4<T>)>;

    /// XAttention end to end: block scores, selection and the block-sparse forward.
    fn xattention_host<T: KernelElement>(
        &self,
        q: ArrayView4<T>,
        k: ArrayView4<T>,
        v: ArrayView4<T>,
        cfg: &XAttnConfig,
        mask: &Mask,
    ) -> Result<XAttnOutput<T>>;

    /// XAttention's two stages: block scores `[B, Hq, nQb, nKb]` and the selection.
    fn xattn_select_blocks<T: KernelElement>(
        &self,
        q: ArrayView4<T>,
        k: ArrayView4<T>,
        cfg: &XAttnConfig,
    ) -> Result<(Array4<f32>, BlockSelection)>;

    /// XAttention's selection of given block scores `[B, H, nQb, nKb]`.
    fn xattn_select_scores(
        &self,
        scores: ArrayView4<f32>,
        cfg: &XAttnConfig,
        len_q: usize,
        len_k: usize,
    ) -> Result<BlockSelection>;

    /// The class of every (query tile, key tile) pair, computed by the kernels' own
    /// classification code, row-major `[query tile][key tile]`.
    fn tile_classes(&self, mask: &Mask, shape: TileShape) -> Result<Vec<TileClass>>;
}

/// Implements [`Kernels`] for a backend through the generic host-array code of
/// crate::launch, which both backends share.
#[cfg(any(feature = "cpu", feature = "cuda"))]
macro_rules! impl_kernels {
    ($backend:ty) => {
        impl $crate::kernels::Kernels for $backend {
            fn attention<T: KernelElement>(
                &self,
                q: ArrayView4<T>,
                k: ArrayView4<T>,
                v: ArrayView4<T>,
                mask: &Mask,
                scale: Option<f32>,
            ) -> Result<(Array4<T>, Array3<f32>)> {
                crate::launch::forward::attention(self, q, k, v, mask, None, scale)
            }

            fn attention_block_sparse<T: KernelElement>(
                &self,
                q: ArrayView4<T>,
                k: ArrayView4<T>,
                v: ArrayView4<T>,
                mask: &Mask,
                selection: &BlockSelection,
                scale: Option<f32>,
            ) -> Result<(Array4<T>, Array3<f32>)> {
                crate::launch::forward::attention(self, q, k, v, mask, Some(selection), scale)
            }

            fn attention_grad<T: KernelElement>(
                &self,
                q: ArrayView4<T>,
                k: ArrayView4<T>,
                v: ArrayView4<T>,
                d_out: ArrayView4<T>,
                mask: &Mask,
                scale: Option<f32>,
                deterministic: bool,
            ) -> Result<(Array4<T>, Array4<T>, Array4<T>)> {
                crate::launch::backward::attention_grad(self, q, k, v, d_out, mask, scale, deterministic)
            }

            fn naive_attention_host<T: KernelElement>(
                &self,
                q: ArrayView4<T>,
                k: ArrayView4<T>,
                v: ArrayView4<T>,
                mask: &Mask,
                scale: Option<f32>,
            ) -> Result<(Array4<T>, Array3<f32>)> {
                crate::launch::naive::attention(self, q, k, v, mask, scale)
            }

            fn dual_rope<T: KernelElement>(
                &self,
                x: ArrayView4<T>,
                positions: &[f64],
                rope: &DualRope,
            ) -> Result<Array4<T>> {
                crate::launch::rope::dual_rope(self, x, positions, rope)
            }

            fn dual_rope_qk<T: KernelElement>(
                &self,
                q: ArrayView4<T>,
                k: ArrayView4<T>,
                positions: &[f64],
                rope: &DualRope,
            ) -> Result<(Array4<T>, Array4<T>)> {
                crate::launch::rope::dual_rope_qk(self, q, k, positions, rope)
            }

            fn xattention_host<T: KernelElement>(
                &self,
                q: ArrayView4<T>,
                k: ArrayView4<T>,
                v: ArrayView4<T>,
                cfg: &XAttnConfig,
                mask: &Mask,
            ) -> Result<XAttnOutput<T>> {
                crate::launch::xattn::xattention(self, q, k, v, cfg, mask)
            }

            fn xattn_select_blocks<T: KernelElement>(
                &self,
                q: ArrayView4<T>,
                k: ArrayView4<T>,
                cfg: &XAttnConfig,
            ) -> Result<(Array4<f32>, BlockSelection)> {
                crate::launch::xattn::xattn_select_blocks(self, q, k, cfg)
            }

            fn xattn_select_scores(
                &self,
                scores: ArrayView4<f32>,
                cfg: &XAttnConfig,
                len_q: usize,
                len_k: usize,
            ) -> Result<BlockSelection> {
                crate::launch::xattn::xattn_select_scores(self, scores, cfg, len_q, len_k)
            }

            fn tile_classes(&self, mask: &Mask, shape: TileShape) -> Result<Vec<TileClass>> {
                crate::launch::classes::tile_classes(self, mask, shape)
            }
        }
    };
}

#[cfg(feature = "cpu")]
impl_kernels!(crate::cpu::CpuBackend);

#[cfg(feature = "cuda")]
impl_kernels!(crate::cuda::Gpu);
