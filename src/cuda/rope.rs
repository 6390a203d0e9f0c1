//! Temporal-Aware Dual RoPE on the device (csrc/rope.cu): Q and K rotated in place
//! from position multipliers computed by [`crate::rope::positions`]. Every input is
//! checked before the launch.

use cudarc::driver::{CudaView, DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig, PushKernelArg};
use ndarray::{Array4, ArrayView4};

use super::{DeviceTensorMut, Gpu, KernelElement, Layout4};
use crate::error::{invalid, Error, Result};
use crate::ffi;
use crate::rope::{DualRope, RopeStyle};

/// Threads of one CTA (the kernels' `__launch_bounds__`).
const THREADS: u32 = 128;
/// Largest head dim: bounds the CTA's shared memory.
const MAX_HEAD_DIM: usize = 512;
/// At most this many tokens per CTA; fewer when a token has enough rows to fill one.
const MAX_TOKENS_PER_BLOCK: usize = 16;
/// Work items (16-byte chunks) a CTA aims at, to pick the tokens per CTA.
const ITEMS_PER_BLOCK: usize = 512;

impl Gpu {
    /// Rotates `x` (`[B, L, H, D]`, bf16 or f16) in place by the Dual RoPE angles
    /// `positions[l] * theta_i` on this handle's stream. `positions` holds `L`
    /// multipliers (`p_global + gamma * t`, from [`crate::rope::positions`] or
    /// [`crate::rope::positions_range`]), uploaded as `f64`; `rope` gives the base and
    /// the pairing (its `gamma` and `time` are already in the multipliers).
    ///
    /// Needs `D` a multiple of 16 up to 512, the last stride 1, the other strides
    /// multiples of 8 elements, a 16-byte aligned start and rows that do not overlap.
    /// Q and K stored side by side (a fused QKV projection `[B, L, 3, H, D]`) can be
    /// rotated in one call as a single tensor of `2H` heads.
    pub fn dual_rope_inplace<T: KernelElement>(
        &self,
        x: &mut DeviceTensorMut<T>,
        positions: &CudaView<f64>,
        rope: &DualRope,
    ) -> Result<()> {
        self.launch_dual_rope(x, None, positions, rope)
    }

    /// [`Gpu::dual_rope_inplace`] on Q and K in one launch (the angles are computed
    /// once for both). They must agree on `B`, `L` and `D`; head counts may differ
    /// (GQA).
    pub fn dual_rope_qk_inplace<T: KernelElement>(
        &self,
        q: &mut DeviceTensorMut<T>,
        k: &mut DeviceTensorMut<T>,
        positions: &CudaView<f64>,
        rope: &DualRope,
    ) -> Result<()> {
        self.launch_dual_rope(q, Some(k), positions, rope)
    }

    /// Convenience for tests and examples: uploads `x` and `positions` (which must be
    /// finite), runs [`Gpu::dual_rope_inplace`] and downloads the result.
    pub fn dual_rope<T: KernelElement>(
        &self,
        x: ArrayView4<T>,
        positions: &[f64],
        rope: &DualRope,
    ) -> Result<Array4<T>> {
        check_host_positions(positions)?;
        let dims = dims4(&x)?;
        let mut dx = self.upload(x.as_standard_layout().as_slice().expect("standard layout"))?;
        let dp = self.upload(positions)?;
        self.dual_rope_inplace(
            &mut DeviceTensorMut { data: dx.as_view_mut(), layout: Layout4::contiguous(dims) },
            &dp.as_view(),
            rope,
        )?;
        Ok(Array4::from_shape_vec(dims, self.download(&dx)?).expect("sizes match"))
    }

    /// Convenience: [`Gpu::dual_rope_qk_inplace`] on host arrays, returns `(q, k)`.
    pub fn dual_rope_qk<T: KernelElement>(
        &self,
        q: ArrayView4<T>,
        k: ArrayView4<T>,
        positions: &[f64],
        rope: &DualRope,
    ) -> Result<(Array4<T>, Array4<T>)> {
        check_host_positions(positions)?;
        let (qd, kd) = (dims4(&q)?, dims4(&k)?);
        let mut dq = self.upload(q.as_standard_layout().as_slice().expect("standard layout"))?;
        let mut dk = self.upload(k.as_standard_layout().as_slice().expect("standard layout"))?;
        let dp = self.upload(positions)?;
        self.dual_rope_qk_inplace(
            &mut DeviceTensorMut { data: dq.as_view_mut(), layout: Layout4::contiguous(qd) },
            &mut DeviceTensorMut { data: dk.as_view_mut(), layout: Layout4::contiguous(kd) },
            &dp.as_view(),
            rope,
        )?;
        let q = Array4::from_shape_vec(qd, self.download(&dq)?).expect("sizes match");
        let k = Array4::from_shape_vec(kd, self.download(&dk)?).expect("sizes match");
        Ok((q, k))
    }

    fn launch_dual_rope<T: KernelElement>(
        &self,
        x: &mut DeviceTensorMut<T>,
        mut y: Option<&mut DeviceTensorMut<T>>,
        positions: &CudaView<f64>,
        rope: &DualRope,
    ) -> Result<()> {
        rope.validate()?;
        for t in std::iter::once(&x.layout).chain(y.as_ref().map(|y| &y.layout)) {
            if t.dims.contains(&0) {
                return Err(Error::Shape(format!("empty dimension in {:?}", t.dims)));
            }
        }
        let [b, l, h, d] = x.layout.dims;
        if let Some(y) = &y {
            let [yb, yl, _, yd] = y.layout.dims;
            if (yb, yl, yd) != (b, l, d) {
                return Err(Error::Shape(format!(
                    "q {:?} and k {:?} disagree on batch, length or head dim",
                    x.layout.dims, y.layout.dims
                )));
            }
        }
        if d == 0 || d % 2 != 0 {
            return Err(Error::Shape(format!("RoPE needs an even, non-zero head dim, got {d}")));
        }
        if d % 16 != 0 || d > MAX_HEAD_DIM {
            return Err(Error::Unsupported(format!(
                "the RoPE kernel takes head dims that are multiples of 16 up to {MAX_HEAD_DIM}, got {d}"
            )));
        }
        if positions.len() != l {
            return Err(Error::Shape(format!("{} positions for {l} tokens", positions.len())));
        }
        let heads_y = y.as_ref().map_or(0, |y| y.layout.dims[2]);
        let chunks = match rope.style {
            RopeStyle::Half => d / 16,
            RopeStyle::Interleaved => d / 8,
        };
        let rows = b.checked_mul(h + heads_y).filter(|&r| r <= i32::MAX as usize);
        let Some(rows) = rows.filter(|r| r * chunks * MAX_TOKENS_PER_BLOCK <= i32::MAX as usize) else {
            return Err(Error::Unsupported(format!("B = {b} times {} heads is too many rows", h + heads_y)));
        };
        if l > i32::MAX as usize {
            return Err(Error::Unsupported(format!("{l} tokens exceed 2^31 - 1")));
        }
        let tokens_per_block = (ITEMS_PER_BLOCK / (rows * chunks)).clamp(1, MAX_TOKENS_PER_BLOCK).min(l);
        let npairs = d / 2;
        let smem = (npairs * 8 + tokens_per_block * npairs * 8) as u32;

        let stream = self.stream();
        let esize = std::mem::size_of::<T>();
        let x_len = x.data.len();
        let (x_ptr, _x_sync) = x.data.device_ptr_mut(stream);
        check_layout("x", &x.layout, x_ptr, x_len, esize)?;
        let (y_ptr, y_layout, _y_sync) = match y.as_mut() {
            Some(y) => {
                let y_len = y.data.len();
                let (ptr, sync) = y.data.device_ptr_mut(stream);
                check_layout("k", &y.layout, ptr, y_len, esize)?;
                (ptr, y.layout, Some(sync))
            }
            None => (0, Layout4 { dims: [b, l, 0, d], strides: [0; 4] }, None),
        };
        let (pos_ptr, _pos_sync) = positions.device_ptr(stream);

        let st = |l: &Layout4, i: usize| l.strides[i] as i64;
        let params = ffi::MaskattnRopeParams {
            x: [x_ptr as *mut _, y_ptr as *mut _],
            batch_stride: [st(&x.layout, 0), st(&y_layout, 0)],
            row_stride: [st(&x.layout, 1), st(&y_layout, 1)],
            head_stride: [st(&x.layout, 2), st(&y_layout, 2)],
            positions: pos_ptr as *const f64,
            log2_base: rope.base.log2(),
            heads: [h as i32, heads_y as i32],
            batch: b as i32,
            len: l as i32,
            head_dim: d as i32,
            interleaved: i32::from(rope.style == RopeStyle::Interleaved),
            tokens_per_block: tokens_per_block as i32,
        };
        let f = self.function(&format!("maskattn_dual_rope_{}", T::KERNEL_NAME))?;
        let cfg = LaunchConfig {
            grid_dim: (l.div_ceil(tokens_per_block) as u32, 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: smem,
        };
        let mut launch = stream.launch_builder(&f);
        launch.arg(&params);
        // SAFETY: `params` points into live device buffers: x (and k) checked above to
        // hold every element the kernel addresses, with 16-byte aligned rows that do
        // not overlap (so the in-place update of each row is race-free; q and k are
        // distinct exclusive borrows), `positions` holds L doubles; D is a multiple
        // of 16, and the shared memory is the (D/2) * 8 * (1 + tokens_per_block)
        // bytes the kernel uses (at most 34,816 for D = 512, under the 48 KB default).
        unsafe { launch.launch(cfg) }?;
        Ok(())
    }
}

// SAFETY: a plain C struct of pointers and numbers, passed by value to the kernel.
unsafe impl DeviceRepr for ffi::MaskattnRopeParams {}

fn dims4<T>(a: &ArrayView4<T>) -> Result<[usize; 4]> {
    let dims = <[usize; 4]>::try_from(a.shape()).expect("4-d");
    if dims.contains(&0) {
        return Err(Error::Shape(format!("empty dimension in {dims:?}")));
    }
    Ok(dims)
}

fn check_host_positions(positions: &[f64]) -> Result<()> {
    match positions.iter().find(|m| !m.is_finite()) {
        Some(bad) => Err(invalid("positions", format!("{bad} is not finite"))),
        None => Ok(()),
    }
}

/// What the kernel relies on for a tensor it rewrites in place: the input checks of
/// every kernel, and no two rows overlapping.
fn check_layout(name: &str, layout: &Layout4, ptr: u64, len: usize, elem_bytes: usize) -> Result<()> {
    layout.check(name, ptr, len, elem_bytes)?;
    layout.check_disjoint(name)
}
