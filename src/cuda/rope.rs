//! Temporal-Aware Dual RoPE on the device (csrc/rope.cu): Q and K rotated in place
//! from position multipliers computed by [`crate::rope::positions`]. Every input is
//! checked before the launch (by src/launch's RoPE plan).

use cudarc::driver::CudaView;
use ndarray::{Array4, ArrayView4};

use super::attention::buf_arg;
use super::{DeviceTensorMut, Gpu, KernelElement};
use crate::error::Result;
use crate::launch::{self, Backend};
use crate::rope::DualRope;

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
        launch::rope::dual_rope(self, x, positions, rope)
    }

    /// Convenience: [`Gpu::dual_rope_qk_inplace`] on host arrays, returns `(q, k)`.
    pub fn dual_rope_qk<T: KernelElement>(
        &self,
        q: ArrayView4<T>,
        k: ArrayView4<T>,
        positions: &[f64],
        rope: &DualRope,
    ) -> Result<(Array4<T>, Array4<T>)> {
        launch::rope::dual_rope_qk(self, q, k, positions, rope)
    }

    fn launch_dual_rope<T: KernelElement>(
        &self,
        x: &mut DeviceTensorMut<T>,
        y: Option<&mut DeviceTensorMut<T>>,
        positions: &CudaView<f64>,
        rope: &DualRope,
    ) -> Result<()> {
        let stream = self.stream();
        let (x, _x) = x.arg_mut(stream);
        let (y, _y) = y.map(|y| y.arg_mut(stream)).unzip();
        let (positions, _positions) = buf_arg(positions, stream);
        let launch = launch::rope::plan::<T>(&x, y.as_ref(), positions, rope)?;
        // SAFETY: x (and k) and the positions are live device views with their own
        // lengths, whose guards are held until after the launch is queued; q and k
        // are distinct exclusive borrows, and the plan checked them.
        unsafe { self.launch(&launch) }
    }
}
