//! The forward attention kernel's safe wrapper: every input is checked before the
//! launch (shapes against each other and the mask, head dim, strides, alignment,
//! buffer bounds), so a bad call is an error value, never an out-of-bounds kernel.

use cudarc::driver::{
    CudaSlice, CudaView, CudaViewMut, DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig, PushKernelArg, ValidAsZeroBits,
};
use ndarray::{Array3, Array4, ArrayView4};

use super::Gpu;
use crate::error::{Error, Result};
use crate::ffi;
use crate::mask::Mask;
use crate::shape::{AttnShape, Element};
use crate::tiles::{self, TileShape};
use crate::xattention::BlockSelection;

const SELECT_BLOCK: usize = ffi::MASKATTN_SELECT_BLOCK as usize;

/// Element types the kernels are compiled for: `half::f16` and `half::bf16`.
pub trait KernelElement: Element + DeviceRepr + ValidAsZeroBits + private::Sealed {
    /// The dtype's part of the kernel names.
    const KERNEL_NAME: &'static str;
}

impl KernelElement for half::f16 {
    const KERNEL_NAME: &'static str = "f16";
}

impl KernelElement for half::bf16 {
    const KERNEL_NAME: &'static str = "bf16";
}

mod private {
    pub trait Sealed {}
    impl Sealed for half::f16 {}
    impl Sealed for half::bf16 {}
}

/// Dims `[B, L, H, D]` and element strides of a tensor in device memory. The last
/// stride must be 1; the kernels also need the other strides to be multiples of 8
/// elements and the base 16-byte aligned (checked at launch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout4 {
    /// `[B, L, H, D]`.
    pub dims: [usize; 4],
    /// Element strides of the four dims.
    pub strides: [usize; 4],
}

impl Layout4 {
    /// The packed row-major layout of `dims`.
    pub fn contiguous(dims: [usize; 4]) -> Self {
        let [_, l, h, d] = dims;
        Self { dims, strides: [l * h * d, h * d, d, 1] }
    }

    /// Elements from the first to one past the last addressed element.
    fn span(&self) -> Option<usize> {
        self.dims.iter().zip(self.strides).try_fold(1usize, |acc, (&n, s)| acc.checked_add((n - 1).checked_mul(s)?))
    }

    /// Checks what the kernels rely on for a buffer of `len` elements at `ptr`.
    pub(crate) fn check(&self, name: &str, ptr: u64, len: usize, elem_bytes: usize) -> Result<()> {
        let bad = |why: String| Err(Error::Shape(format!("{name}: {why} (layout {self:?})")));
        if self.dims.contains(&0) {
            return bad("empty dimension".into());
        }
        if self.strides[3] != 1 {
            return bad("the head dimension must be contiguous (stride 1)".into());
        }
        if self.strides[..3].iter().any(|s| s % 8 != 0) {
            return bad("batch, row and head strides must be multiples of 8 elements".into());
        }
        if ptr % 16 != 0 {
            return bad(format!("device address {ptr:#x} is not 16-byte aligned"));
        }
        match self.span() {
            Some(span) if span <= len && span.checked_mul(elem_bytes).is_some() => Ok(()),
            _ => bad(format!("addresses past the end of its buffer of {len} elements")),
        }
    }

    /// Distinct (b, l, h) rows of D elements never overlap: needed for outputs.
    pub(crate) fn check_disjoint(&self, name: &str) -> Result<()> {
        let mut dims: Vec<(usize, usize)> =
            (0..3).map(|i| (self.strides[i], self.dims[i])).filter(|&(_, n)| n > 1).collect();
        dims.sort();
        let mut extent = self.dims[3];
        for (stride, n) in dims {
            if stride < extent {
                return Err(Error::Shape(format!("{name}: rows overlap (layout {self:?})")));
            }
            extent = stride * n;
        }
        Ok(())
    }
}

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
}

/// A mask uploaded for the forward kernel: its row intervals and the launch order of
/// its query tiles (heaviest first) for the kernel's tiles at one head dim.
#[derive(Debug)]
pub struct DeviceMask {
    intervals: CudaSlice<i32>,
    tile_order: CudaSlice<i32>,
    len_q: usize,
    len_k: usize,
    tiles: TileShape,
}

impl DeviceMask {
    /// Query rows.
    pub fn len_q(&self) -> usize {
        self.len_q
    }

    /// Keys.
    pub fn len_k(&self) -> usize {
        self.len_k
    }
}

impl Gpu {
    /// Uploads a mask for the forward kernel at head dim `head_dim` (a few KB even at
    /// 128K tokens: 16 bytes per row plus 4 per query tile). Reuse it across calls,
    /// batches and heads.
    pub fn upload_mask(&self, mask: &Mask, head_dim: usize) -> Result<DeviceMask> {
        let tiles = tiles::forward_tiles(head_dim)?;
        let order = tiles::query_tile_order(mask, tiles);
        if order.len() > 65535 {
            return Err(Error::Unsupported(format!("{} query tiles exceed the grid's 65535", order.len())));
        }
        Ok(DeviceMask {
            intervals: self.upload(mask.as_flat())?,
            tile_order: self.upload(&order)?,
            len_q: mask.len_q(),
            len_k: mask.len_k(),
            tiles,
        })
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
        let sh = AttnShape::of_qkv(&q.layout.dims, &k.layout.dims, &v.layout.dims)?;
        if (sh.len_q, sh.len_k) != (mask.len_q, mask.len_k) {
            return Err(Error::Shape(format!(
                "the mask is for Lq={}, Lk={} but q, k have Lq={}, Lk={}",
                mask.len_q, mask.len_k, sh.len_q, sh.len_k
            )));
        }
        if out.layout.dims != q.layout.dims {
            return Err(Error::Shape(format!("out dims {:?} differ from q's {:?}", out.layout.dims, q.layout.dims)));
        }
        let tiles = tiles::forward_tiles(sh.head_dim)?;
        if tiles != mask.tiles {
            return Err(Error::Shape(format!(
                "the mask was uploaded for {:?} tiles, head dim {} needs {tiles:?}",
                mask.tiles, sh.head_dim
            )));
        }
        if sh.batch * sh.heads_q > i32::MAX as usize {
            return Err(Error::Unsupported("batch * heads_q exceeds the grid".into()));
        }
        let select_k_blocks = sh.len_k.div_ceil(SELECT_BLOCK);
        let select_len = sh.batch * sh.heads_q * sh.len_q.div_ceil(SELECT_BLOCK) * select_k_blocks;
        if let Some(sel) = selection {
            if sel.len() != select_len {
                return Err(Error::Shape(format!(
                    "the block selection holds {} bytes, B*Hq*ceil(Lq/128)*ceil(Lk/128) = {select_len}",
                    sel.len()
                )));
            }
        }
        let lse_len = sh.batch * sh.heads_q * sh.len_q;
        if lse.len() < lse_len {
            return Err(Error::Shape(format!("lse holds {} floats, needs B*Hq*Lq = {lse_len}", lse.len())));
        }
        // The kernel masks scores with -inf before scaling: a scale <= 0 would turn
        // them into NaN or +inf, so only positive finite scales are taken.
        let scale = match scale {
            Some(s) if !(s.is_finite() && s > 0.0) => {
                return Err(crate::error::invalid("scale", format!("{s}: the kernels need a positive finite scale")))
            }
            Some(s) => s,
            None => 1.0 / (sh.head_dim as f32).sqrt(),
        };
        let f = self.function(&format!("maskattn_fwd_{}_d{}", T::KERNEL_NAME, sh.head_dim))?;
        let smem = match sh.head_dim {
            64 => ffi::MASKATTN_FWD_SMEM_D64,
            96 => ffi::MASKATTN_FWD_SMEM_D96,
            _ => ffi::MASKATTN_FWD_SMEM_D128,
        };

        let stream = self.stream();
        let esize = std::mem::size_of::<T>();
        let out_len = out.data.len();
        let (q_ptr, _q_sync) = q.data.device_ptr(stream);
        let (k_ptr, _k_sync) = k.data.device_ptr(stream);
        let (v_ptr, _v_sync) = v.data.device_ptr(stream);
        let (o_ptr, _o_sync) = out.data.device_ptr_mut(stream);
        let (lse_ptr, _lse_sync) = lse.device_ptr_mut(stream);
        let (iv_ptr, _iv_sync) = mask.intervals.device_ptr(stream);
        let (order_ptr, _order_sync) = mask.tile_order.device_ptr(stream);
        let (select_ptr, _select_sync) = match selection {
            Some(sel) => {
                let (ptr, sync) = sel.device_ptr(stream);
                (ptr, Some(sync))
            }
            None => (0, None),
        };
        q.layout.check("q", q_ptr, q.data.len(), esize)?;
        k.layout.check("k", k_ptr, k.data.len(), esize)?;
        v.layout.check("v", v_ptr, v.data.len(), esize)?;
        out.layout.check("out", o_ptr, out_len, esize)?;
        out.layout.check_disjoint("out")?;

        let st = |l: &Layout4| l.strides.map(|s| s as i64);
        let ([qb, qr, qh, _], [kb, kr, kh, _], [vb, vr, vh, _], [ob, or, oh, _]) =
            (st(&q.layout), st(&k.layout), st(&v.layout), st(&out.layout));
        let params = ffi::MaskattnFwdParams {
            q: q_ptr as *const _,
            k: k_ptr as *const _,
            v: v_ptr as *const _,
            o: o_ptr as *mut _,
            lse: lse_ptr as *mut f32,
            intervals: iv_ptr as *const i32,
            tile_order: order_ptr as *const i32,
            q_batch_stride: qb,
            q_row_stride: qr,
            q_head_stride: qh,
            k_batch_stride: kb,
            k_row_stride: kr,
            k_head_stride: kh,
            v_batch_stride: vb,
            v_row_stride: vr,
            v_head_stride: vh,
            o_batch_stride: ob,
            o_row_stride: or,
            o_head_stride: oh,
            batch: sh.batch as i32,
            heads_q: sh.heads_q as i32,
            heads_kv: sh.heads_kv as i32,
            len_q: sh.len_q as i32,
            len_k: sh.len_k as i32,
            head_dim: sh.head_dim as i32,
            scale,
            scale_log2: scale * std::f32::consts::LOG2_E,
            block_select: select_ptr as *const u8,
            select_k_blocks: select_k_blocks as i32,
        };
        if smem > 48 * 1024 {
            f.set_attribute(
                cudarc::driver::sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                smem as i32,
            )?;
        }
        let cfg = LaunchConfig {
            grid_dim: ((sh.batch * sh.heads_q) as u32, mask.tile_order.len() as u32, 1),
            block_dim: (ffi::MASKATTN_FWD_THREADS, 1, 1),
            shared_mem_bytes: smem,
        };
        let mut launch = stream.launch_builder(&f);
        launch.arg(&params);
        // SAFETY: every pointer in `params` comes from a live device buffer whose
        // layout was checked above to cover every element the kernel addresses (dims,
        // strides, alignment, bounds, disjoint output rows); the kernel's grid and
        // shared memory are those it was compiled for.
        unsafe { launch.launch(cfg) }?;
        Ok(())
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
        self.attention_host(q, k, v, mask, None, scale)
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
        self.attention_host(q, k, v, mask, Some(selection), scale)
    }

    fn attention_host<T: KernelElement>(
        &self,
        q: ArrayView4<T>,
        k: ArrayView4<T>,
        v: ArrayView4<T>,
        mask: &Mask,
        selection: Option<&BlockSelection>,
        scale: Option<f32>,
    ) -> Result<(Array4<T>, Array3<f32>)> {
        let sh = AttnShape::new(q.shape(), k.shape(), v.shape(), mask)?;
        if let Some(sel) = selection {
            sel.check_shape(&sh)?;
        }
        let dims = |a: &ArrayView4<T>| <[usize; 4]>::try_from(a.shape()).expect("4-d");
        let upload = |a: &ArrayView4<T>| self.upload(a.as_standard_layout().as_slice().expect("standard layout"));
        let (dq, dk, dv) = (upload(&q)?, upload(&k)?, upload(&v)?);
        let device_mask = self.upload_mask(mask, sh.head_dim)?;
        let device_selection = selection.map(|s| self.upload(s.as_bytes())).transpose()?;
        let mut out = self.zeros::<T>(q.len())?;
        let mut lse = self.zeros::<f32>(sh.batch * sh.heads_q * sh.len_q)?;
        self.forward(
            &DeviceTensor::contiguous(&dq, dims(&q)),
            &DeviceTensor::contiguous(&dk, dims(&k)),
            &DeviceTensor::contiguous(&dv, dims(&v)),
            &device_mask,
            device_selection.as_ref().map(|s| s.as_view()).as_ref(),
            scale,
            &mut DeviceTensorMut::contiguous(&mut out, dims(&q)),
            &mut lse.as_view_mut(),
        )?;
        let out = Array4::from_shape_vec(dims(&q), self.download(&out)?).expect("sizes match");
        let lse = Array3::from_shape_vec((sh.batch, sh.heads_q, sh.len_q), self.download(&lse)?).expect("sizes match");
        Ok((out, lse))
    }
}

// SAFETY: a plain C struct of pointers and numbers, passed by value to the kernel.
unsafe impl DeviceRepr for ffi::MaskattnFwdParams {}

#[cfg(test)]
mod tests {
    use super::Layout4;

    #[test]
    fn layouts_the_kernels_cannot_take_are_rejected() {
        let ok = Layout4::contiguous([2, 100, 4, 64]);
        assert!(ok.check("q", 256, 2 * 100 * 4 * 64, 2).is_ok());
        assert!(ok.check("q", 256, 2 * 100 * 4 * 64 - 1, 2).is_err(), "buffer too short");
        assert!(ok.check("q", 258, 2 * 100 * 4 * 64, 2).is_err(), "misaligned base");
        let odd = Layout4 { dims: [1, 10, 1, 64], strides: [640, 68, 64, 1] };
        assert!(odd.check("k", 0, 1 << 20, 2).is_err(), "row stride not a multiple of 8");
        let transposed = Layout4 { dims: [1, 10, 1, 64], strides: [640, 1, 640, 10] };
        assert!(transposed.check("k", 0, 1 << 20, 2).is_err(), "head dim not contiguous");
        let empty = Layout4::contiguous([1, 0, 1, 64]);
        assert!(empty.check("k", 0, 1 << 20, 2).is_err());
        // [B, H, L, D] storage seen as [B, L, H, D]: strided but valid and disjoint.
        let bhld = Layout4 { dims: [2, 100, 4, 64], strides: [4 * 100 * 64, 64, 100 * 64, 1] };
        assert!(bhld.check("out", 0, 2 * 100 * 4 * 64, 2).is_ok());
        assert!(bhld.check_disjoint("out").is_ok());
        // Rows that overlap (row stride 8 < D) cannot be written in parallel.
        let overlapping = Layout4 { dims: [1, 10, 1, 64], strides: [640, 8, 640, 1] };
        assert!(overlapping.check_disjoint("out").is_err());
        // Broadcast heads: a fine input (one buffer read by every head), not an output.
        let broadcast_heads = Layout4 { dims: [1, 10, 4, 64], strides: [640, 64, 0, 1] };
        assert!(broadcast_heads.check("k", 0, 640, 2).is_ok());
        assert!(broadcast_heads.check_disjoint("out").is_err());
        // Q and K heads of a fused [B, L, 3, H, D] buffer seen as 2H heads: disjoint rows.
        let fused = Layout4 { dims: [2, 10, 8, 64], strides: [10 * 12 * 64, 12 * 64, 64, 1] };
        assert!(fused.check("qk", 0, 2 * 10 * 12 * 64, 2).is_ok());
        assert!(fused.check_disjoint("qk").is_ok());
    }
}
