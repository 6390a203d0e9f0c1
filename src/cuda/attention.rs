//! The forward attention kernel's safe wrapper: every input is checked before the
//! launch (shapes against each other and the mask, head dim, strides, alignment,
//! buffer bounds: src/launch's forward plan), so a bad call is an error value, never
//! an out-of-bounds kernel.

use cudarc::driver::{CudaSlice, CudaStream, CudaView, CudaViewMut, DevicePtr, DevicePtrMut, DeviceSlice, SyncOnDrop};
use ndarray::{Array3, Array4, ArrayView4};

use super::Gpu;
use crate::error::Result;
use crate::launch::forward::{ForwardArgs, ForwardMask};
use crate::launch::{self, BufArg, KernelElement, Layout4, TensorArg};
use crate::mask::Mask;
use crate::xattention::BlockSelection;

/// A read-only `[B, L, H, D]` tensor on the device.
#[derive(Debug)]
pub struct DeviceTensor<'a, T> {
    /// The buffer, starting at element (0, 0, 0, 0).
    pub data: CudaView<'a, T>,
    /// Dims and strides.
    pub layout: Layout4,
}

impl<'a, T> DeviceTensor<'a, T> {
    /// The whole of `data` as a packed row-major tensor of `dims`.
    pub fn contiguous(data: &'a CudaSlice<T>, dims: [usize; 4]) -> Self {
        Self { data: data.as_view(), layout: Layout4::contiguous(dims) }
    }

    /// The tensor as a plan takes it, and the guard that orders the launches reading
    /// it: held until they are queued, then dropped to record the read on `stream`.
    pub(crate) fn arg<'s>(&'s self, stream: &'s CudaStream) -> (TensorArg, SyncOnDrop<'s>) {
        let (BufArg { addr, len }, sync) = buf_arg(&self.data, stream);
        (TensorArg { addr, len, layout: self.layout }, sync)
    }
}

/// A writable `[B, L, H, D]` tensor on the device.
#[derive(Debug)]
pub struct DeviceTensorMut<'a, T> {
    /// The buffer, starting at element (0, 0, 0, 0).
    pub data: CudaViewMut<'a, T>,
    /// Dims and strides.
    pub layout: Layout4,
}

impl<'a, T> DeviceTensorMut<'a, T> {
    /// The whole of `data` as a packed row-major tensor of `dims`.
    pub fn contiguous(data: &'a mut CudaSlice<T>, dims: [usize; 4]) -> Self {
        Self { data: data.as_view_mut(), layout: Layout4::contiguous(dims) }
    }

    /// [`DeviceTensor::arg`] for launches writing the tensor.
    pub(crate) fn arg_mut<'s>(&'s mut self, stream: &'s CudaStream) -> (TensorArg, SyncOnDrop<'s>) {
        let layout = self.layout;
        let (BufArg { addr, len }, sync) = buf_arg_mut(&mut self.data, stream);
        (TensorArg { addr, len, layout }, sync)
    }
}

/// A device buffer that launches on `stream` read, with its guard (see
/// [`DeviceTensor::arg`]).
pub(crate) fn buf_arg<'s, T>(buf: &'s impl DevicePtr<T>, stream: &'s CudaStream) -> (BufArg, SyncOnDrop<'s>) {
    let (addr, sync) = buf.device_ptr(stream);
    (BufArg { addr, len: buf.len() }, sync)
}

/// A device buffer that launches on `stream` write, with its guard.
pub(crate) fn buf_arg_mut<'s, T>(
    buf: &'s mut impl DevicePtrMut<T>,
    stream: &'s CudaStream,
) -> (BufArg, SyncOnDrop<'s>) {
    let len = DeviceSlice::len(buf);
    let (addr, sync) = buf.device_ptr_mut(stream);
    (BufArg { addr, len }, sync)
}

/// A mask uploaded for the forward kernel: its row intervals and the launch order of
/// its query tiles (heaviest first) for the kernel's tiles at one head dim.
#[derive(Debug)]
pub struct DeviceMask(pub(crate) ForwardMask<Gpu>);

impl DeviceMask {
    /// Query rows.
    pub fn len_q(&self) -> usize {
        self.0.len_q()
    }

    /// Keys.
    pub fn len_k(&self) -> usize {
        self.0.len_k()
    }
}

impl Gpu {
    /// Uploads a mask for the forward kernel at head dim `head_dim` (a few KB even at
    /// 128K tokens: 16 bytes per row plus 4 per query tile). Reuse it across calls,
    /// batches and heads.
    pub fn upload_mask(&self, mask: &Mask, head_dim: usize) -> Result<DeviceMask> {
        Ok(DeviceMask(ForwardMask::new(self, mask, head_dim)?))
    }

    /// `out = softmax(scale * q k^T + mask) v` and `lse` (`[B, Hq, Lq]`, natural log,
    /// contiguous), on this handle's stream. `scale` defaults to `1/sqrt(D)`. K and V
    /// have `Hkv` heads dividing Q's `Hq` (GQA/MQA, no copies). A query row with no
    /// visible key gets 0 and `-inf`.
    #[allow(clippy::too_many_arguments)]
    pub fn attention_forward<T: KernelElement>(
        &self,
        q: &DeviceTensor<T>,
        k: &DeviceTensor<T>,
        v: &DeviceTensor<T>,
        mask: &DeviceMask,
        scale: Option<f32>,
        out: &mut DeviceTensorMut<T>,
        lse: &mut CudaViewMut<f32>,
    ) -> Result<()> {
        self.forward(q, k, v, mask, None, scale, out, lse)
    }

    /// [`Gpu::attention_forward`] with an XAttention block selection ANDed to the mask:
    /// `selection` is `u8 [B][Hq][ceil(Lq/128)][ceil(Lk/128)]` (the layout of
    /// [`BlockSelection::as_bytes`], e.g. from [`Gpu::xattn_select`]), nonzero = the
    /// 128x128 block is computed. Unselected key tiles are skipped like EMPTY ones.
    #[allow(clippy::too_many_arguments)]
    pub fn attention_forward_block_sparse<T: KernelElement>(
        &self,
        q: &DeviceTensor<T>,
        k: &DeviceTensor<T>,
        v: &DeviceTensor<T>,
        mask: &DeviceMask,
        selection: &CudaView<u8>,
        scale: Option<f32>,
        out: &mut DeviceTensorMut<T>,
        lse: &mut CudaViewMut<f32>,
    ) -> Result<()> {
        self.forward(q, k, v, mask, Some(selection), scale, out, lse)
    }

    #[allow(clippy::too_many_arguments)]
    fn forward<T: KernelElement>(
        &self,
        q: &DeviceTensor<T>,
        k: &DeviceTensor<T>,
        v: &DeviceTensor<T>,
        mask: &DeviceMask,
        selection: Option<&CudaView<u8>>,
        scale: Option<f32>,
        out: &mut DeviceTensorMut<T>,
        lse: &mut CudaViewMut<f32>,
    ) -> Result<()> {
        let stream = self.stream();
        let (q, _q) = q.arg(stream);
        let (k, _k) = k.arg(stream);
        let (v, _v) = v.arg(stream);
        let (out, _out) = out.arg_mut(stream);
        let (lse, _lse) = buf_arg_mut(lse, stream);
        let (mask, _mask) = mask.0.args(self);
        let (selection, _selection) = selection.map(|s| buf_arg(s, stream)).unzip();
        // SAFETY: every address is that of a live device view or mask table with its
        // own length, whose guard is held until after the launch is queued.
        unsafe { launch::forward::launch::<Self, T>(self, &ForwardArgs { q, k, v, mask, selection, scale, out, lse }) }
    }

    /// Convenience for tests and examples: uploads `[B, L, H, D]` host arrays, runs
    /// [`Gpu::attention_forward`] and downloads `(out, lse)`.
    pub fn attention<T: KernelElement>(
        &self,
        q: ArrayView4<T>,
        k: ArrayView4<T>,
        v: ArrayView4<T>,
        mask: &Mask,
        scale: Option<f32>,
    ) -> Result<(Array4<T>, Array3<f32>)> {
        launch::forward::attention(self, q, k, v, mask, None, scale)
    }

    /// [`Gpu::attention`] with a block selection ANDed to the mask (see
    /// [`Gpu::attention_forward_block_sparse`]).
    pub fn attention_block_sparse<T: KernelElement>(
        &self,
        q: ArrayView4<T>,
        k: ArrayView4<T>,
        v: ArrayView4<T>,
        mask: &Mask,
        selection: &BlockSelection,
        scale: Option<f32>,
    ) -> Result<(Array4<T>, Array3<f32>)> {
        launch::forward::attention(self, q, k, v, mask, Some(selection), scale)
    }
}
