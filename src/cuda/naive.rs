//! A deliberately naive GPU attention (csrc/naive_attention.cu): the "plain
//! matmul-softmax" a user writes without flash attention, kept as a point of
//! comparison for the flash kernels. For each (batch, query head) in turn it writes
//! the whole `[Lq, Lk]` score matrix to an f32 scratch buffer, masks and softmaxes it
//! row by row, and multiplies by V: every pair is computed, masked or not, on CUDA
//! cores. The inputs are checked before any launch, as for [`Gpu::attention_forward`].

use cudarc::driver::{CudaView, CudaViewMut};
use ndarray::{Array3, Array4, ArrayView4};

use super::attention::{buf_arg, buf_arg_mut};
use super::{DeviceTensor, DeviceTensorMut, Gpu, KernelElement};
use crate::error::Result;
use crate::launch::{self, naive::NaiveArgs};
use crate::mask::Mask;

impl Gpu {
    /// `out = softmax(scale * q k^T + mask) v` and `lse` (`[B, Hq, Lq]`, natural log,
    /// contiguous) by the naive three-kernel attention, on this handle's stream. The
    /// arguments are those of [`Gpu::attention_forward`], except the mask: its row
    /// intervals `[Lq][4]` as [`Mask::as_flat`] gives them (`gpu.upload(mask.as_flat())`).
    /// Any head dim; `scale` defaults to `1/sqrt(D)`. A query row with no visible key
    /// gets 0 and `-inf`. Needs an f32 scratch of `Lq * Lk` floats (at most 4 GiB),
    /// allocated per call; [`Error::Unsupported`](crate::Error::Unsupported) beyond.
    #[allow(clippy::too_many_arguments)]
    pub fn naive_attention<T: KernelElement>(
        &self,
        q: &DeviceTensor<T>,
        k: &DeviceTensor<T>,
        v: &DeviceTensor<T>,
        intervals: &CudaView<i32>,
        scale: Option<f32>,
        out: &mut DeviceTensorMut<T>,
        lse: &mut CudaViewMut<f32>,
    ) -> Result<()> {
        let stream = self.stream();
        let (q, _q) = q.arg(stream);
        let (k, _k) = k.arg(stream);
        let (v, _v) = v.arg(stream);
        let (intervals, _intervals) = buf_arg(intervals, stream);
        let (out, _out) = out.arg_mut(stream);
        let (lse, _lse) = buf_arg_mut(lse, stream);
        // SAFETY: every address is that of a live device view with its own length,
        // whose guard is held until after the launches are queued; out and lse are
        // exclusive borrows.
        unsafe { launch::naive::run::<Gpu, T>(self, &NaiveArgs { q, k, v, intervals, scale, out, lse }) }
    }

    /// Convenience for tests and examples: uploads `[B, L, H, D]` host arrays and the
    /// mask, runs [`Gpu::naive_attention`] and downloads `(out, lse)`.
    pub fn naive_attention_host<T: KernelElement>(
        &self,
        q: ArrayView4<T>,
        k: ArrayView4<T>,
        v: ArrayView4<T>,
        mask: &Mask,
        scale: Option<f32>,
    ) -> Result<(Array4<T>, Array3<f32>)> {
        launch::naive::attention(self, q, k, v, mask, scale)
    }
}
