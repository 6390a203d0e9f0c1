//! The backward attention kernels' safe wrapper (csrc/flash_bwd.cu): dQ, dK, dV of
//! attention with an interval mask, FlashAttention-2's backward on `mma.sync`.
//!
//! The schedule, step for step:
//!
//! 1. Preprocessing kernel: `D = rowsum(dO * O)` and the LSE in base 2 (`-inf`, a row
//!    that sees no key, becomes `+inf`, so its probabilities are `2^-inf = 0`), both
//!    `f32 [B, Hq, Lq_pad]` with `Lq_pad` = `Lq` rounded up to the query tile; in the
//!    atomic mode it also zeroes the `f32` dQ accumulator `[B, Hq, Lq, D]`.
//! 2. Main kernel, one CTA per (batch, kv head, key tile of 128 keys), heaviest walk
//!    first: K and V loaded once; for each query head of the GQA group and each query
//!    tile (64 rows; 32 in the compact configuration at D = 128) of the key tile's
//!    walk, the pair is classified with the query tile's summary (EMPTY skipped
//!    without loading Q or dO, FULL without a mask, PARTIAL masked per element), then `P = exp2(S scale log2(e) - LSE2)`,
//!    `dV += P^T dO`, `dP = dO V^T`, `dS = P (dP - D)`, `dK += dS^T Q`; dK (times the
//!    scale) and dV are written once, summed over the group in registers (no atomics).
//! 3. dQ, one of two ways:
//!    - atomic (default): the main kernel also computes `dS K` per pair and adds it
//!      with `f32` atomics into the accumulator; a last kernel converts
//!      `scale * accumulator` to the input dtype and layout. Atomics make the
//!      summation order, hence the last bits of dQ, vary from run to run.
//!    - deterministic: the main kernel skips dQ; a separate pass, one CTA per
//!      (batch, query head, query tile of 64 rows) walking key tiles of 64 exactly as
//!      the forward does, recomputes `S`, `P`, `dP`, `dS` and accumulates
//!      `dQ = scale dS K` in registers. Bit-reproducible, at the cost of two extra
//!      matrix products per visible tile pair (`Q K^T` and `dO V^T` again): seven
//!      instead of five, about 1.4x the tensor-core work of the atomic mode (the dQ
//!      pass itself has no atomics and writes dQ once).
//!
//! The query-tile summaries, the per-key-tile walks (the hull of the query tiles
//! whose forward key-tile range contains the key tile) and both launch orders are
//! computed on the host in `O(Lq + number of tile pairs walked)` from the mask by the
//! same `csrc/mask_tiles.h` code the kernels run, and uploaded with the intervals
//! ([`Gpu::upload_backward_mask`]). The checks and launches are
//! src/launch's backward plan.

use cudarc::driver::CudaView;
use ndarray::{Array4, ArrayView4};

use super::attention::{buf_arg, DeviceTensor, DeviceTensorMut};
use super::Gpu;
use crate::error::Result;
use crate::launch::backward::{BackwardArgs, BackwardMask, BackwardTiles};
use crate::launch::{self, KernelElement};
use crate::mask::Mask;

/// A mask uploaded for the backward kernels: its row intervals, the query-tile
/// summaries, the key tiles' walks and both launch orders (a few KB even at 128K
/// tokens). Reuse it across calls, batches and heads.
#[derive(Debug)]
pub struct DeviceBackwardMask(BackwardMask<Gpu>);

impl DeviceBackwardMask {
    /// Query rows.
    pub fn len_q(&self) -> usize {
        self.0.len_q()
    }

    /// Keys.
    pub fn len_k(&self) -> usize {
        self.0.len_k()
    }

    /// The kernels' configuration this mask was uploaded for (its query tiles and
    /// shared memory), chosen from the handle's [`Gpu::tile_config`] and
    /// [`Gpu::smem_budget`].
    pub fn tiles(&self) -> BackwardTiles {
        self.0.tiles()
    }
}

impl Gpu {
    /// Uploads a mask for the backward kernels at head dim `head_dim`, with the tables
    /// of the configuration this handle runs ([`Gpu::with_tile_config`]; by default
    /// the pipelined one where it fits [`Gpu::smem_budget`], else the compact one).
    pub fn upload_backward_mask(&self, mask: &Mask, head_dim: usize) -> Result<DeviceBackwardMask> {
        Ok(DeviceBackwardMask(BackwardMask::new(self, mask, head_dim)?))
    }

    /// Gradients of `out = softmax(scale * q k^T + mask) v` on this handle's stream:
    /// `dq` (`[B, Lq, Hq, D]`), `dk` and `dv` (`[B, Lk, Hkv, D]`, summed over each kv
    /// head's query heads with GQA/MQA) from the inputs, the forward's `out` and `lse`
    /// (`[B, Hq, Lq]`, natural log, contiguous, as [`Gpu::attention_forward`] writes it;
    /// `-inf` for rows that see no key) and `d_out = dL/dO` (like `q`). `scale` must be
    /// the forward's (default `1/sqrt(D)`). Every element of `dq`, `dk`, `dv` is
    /// written; rows that see no key get 0, keys no row sees get 0.
    ///
    /// Three launches: a preprocessing kernel (`D = rowsum(dO * O)`, the LSE in base 2),
    /// the main kernel (one CTA per batch, kv head and key tile of 128 keys: K and V
    /// loaded once, every query head of the group and every non-EMPTY query tile of 64
    /// rows walked, dK and dV accumulated in registers and written once, without atomics),
    /// then dQ one of two ways:
    /// - `deterministic = false`: the main kernel also computes `dS K` for each tile pair
    ///   and adds it with `f32` atomics into a `[B, Hq, Lq, D]` accumulator, which a last
    ///   kernel scales and converts. The atomics' order varies, so dQ's last bits vary
    ///   between runs (dK and dV never do).
    /// - `deterministic = true`: no atomics; a separate pass (one CTA per batch, query
    ///   head and query tile, walking the key tiles as the forward does) recomputes
    ///   `S = Q K^T`, `P`, `dP = dO V^T` and `dS` and accumulates `dQ = scale dS K` in
    ///   registers. Bit-identical from run to run, at the cost of two extra matrix
    ///   products per visible tile pair: seven instead of five, about 1.4x the
    ///   tensor-core work of the atomic mode (it saves the atomics and the accumulator's
    ///   `4 * B * Hq * Lq * D` bytes of traffic and memory).
    ///
    /// Scratch: `8 * B * Hq * Lq_pad` bytes (D and the base-2 LSE), plus the
    /// `4 * B * Hq * Lq * D` byte dQ accumulator (D of the head-dim class) in the
    /// atomic mode, allocated on the stream for the call.
    ///
    /// Errors, all before any launch: shapes that disagree (with each other, the mask,
    /// `lse`'s length), a head dim that is not a multiple of 8 from 8 to 256, a scale that is not
    /// positive and finite, strides that are not multiples of 8 elements, bases not
    /// 16-byte aligned, buffers too short, outputs whose rows overlap, a mask
    /// uploaded for a configuration that needs more shared memory than the device
    /// has (a forced [`TileConfig::Pipelined`](crate::tiles::TileConfig) on a 99 KB
    /// part).
    #[allow(clippy::too_many_arguments)]
    pub fn attention_backward<T: KernelElement>(
        &self,
        q: &DeviceTensor<T>,
        k: &DeviceTensor<T>,
        v: &DeviceTensor<T>,
        out: &DeviceTensor<T>,
        lse: &CudaView<f32>,
        d_out: &DeviceTensor<T>,
        mask: &DeviceBackwardMask,
        scale: Option<f32>,
        deterministic: bool,
        dq: &mut DeviceTensorMut<T>,
        dk: &mut DeviceTensorMut<T>,
        dv: &mut DeviceTensorMut<T>,
    ) -> Result<()> {
        let stream = self.stream();
        let (q, _q) = q.arg(stream);
        let (k, _k) = k.arg(stream);
        let (v, _v) = v.arg(stream);
        let (out, _out) = out.arg(stream);
        let (lse, _lse) = buf_arg(lse, stream);
        let (d_out, _d_out) = d_out.arg(stream);
        let (mask, _mask) = mask.0.args(self);
        let (dq, _dq) = dq.arg_mut(stream);
        let (dk, _dk) = dk.arg_mut(stream);
        let (dv, _dv) = dv.arg_mut(stream);
        let args = BackwardArgs { q, k, v, out, lse, d_out, mask, scale, deterministic, dq, dk, dv };
        // SAFETY: every address is that of a live device view or mask table with its
        // own length, whose guard is held until after the launches are queued; dq,
        // dk and dv are exclusive borrows.
        unsafe { launch::backward::run::<Gpu, T>(self, &args) }
    }

    /// Convenience for tests and examples: uploads `[B, L, H, D]` host arrays, runs
    /// [`Gpu::attention_forward`] and then [`Gpu::attention_backward`] with upstream
    /// gradient `d_out`, and downloads `(dq, dk, dv)`.
    #[allow(clippy::type_complexity, clippy::too_many_arguments)]
    pub fn attention_grad<T: KernelElement>(
        &self,
        q: ArrayView4<T>,
        k: ArrayView4<T>,
        v: ArrayView4<T>,
        d_out: ArrayView4<T>,
        mask: &Mask,
        scale: Option<f32>,
        deterministic: bool,
    ) -> Result<(Array4<T>, Array4<T>, Array4<T>)> {
        launch::backward::attention_grad(self, q, k, v, d_out, mask, scale, deterministic)
    }
}
