//! GPU timing of the forward and backward kernels on a [`Case`](crate::cases::Case):
//! inputs made on the device once, CUDA events around the launches, medians reported.

use cudarc::driver::{sys::CUevent_flags, CudaSlice};

use super::attention::{DeviceMask, DeviceTensor, DeviceTensorMut};
use super::backward::DeviceBackwardMask;
use super::Gpu;
use super::KernelElement;
use crate::cases::Case;
use crate::error::Result;
use crate::mask::Mask;

/// Device buffers for one case, reused by every timed forward launch.
pub struct CaseBuffers<T> {
    q: CudaSlice<T>,
    k: CudaSlice<T>,
    v: CudaSlice<T>,
    out: CudaSlice<T>,
    lse: CudaSlice<f32>,
    q_dims: [usize; 4],
    kv_dims: [usize; 4],
}

/// Device buffers for timing the backward pass on one case: the forward's buffers
/// (O and LSE computed once by the forward kernel), a random dO, and dQ, dK, dV.
pub struct BackwardCaseBuffers<T> {
    fwd: CaseBuffers<T>,
    d_out: CudaSlice<T>,
    dq: CudaSlice<T>,
    dk: CudaSlice<T>,
    dv: CudaSlice<T>,
}

/// Pseudo-random values in [-1, 1) rounded to T (xorshift; cheap for 268M elements).
fn random<T: KernelElement>(n: usize, seed: u64) -> Vec<T> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            T::from_f64((s >> 11) as f64 / (1u64 << 52) as f64 - 1.0)
        })
        .collect()
}

impl<T: KernelElement> CaseBuffers<T> {
    /// Q, K, V with random values, O and LSE, for `case`.
    pub fn new(gpu: &Gpu, case: &Case) -> Result<Self> {
        let q_dims = [case.batch, case.mask.len_q(), case.heads_q, case.head_dim];
        let kv_dims = [case.batch, case.mask.len_k(), case.heads_kv, case.head_dim];
        let (nq, nkv) = (q_dims.iter().product(), kv_dims.iter().product());
        Ok(Self {
            q: gpu.upload(&random::<T>(nq, 1))?,
            k: gpu.upload(&random::<T>(nkv, 2))?,
            v: gpu.upload(&random::<T>(nkv, 3))?,
            out: gpu.zeros(nq)?,
            lse: gpu.zeros(case.batch * case.heads_q * case.mask.len_q())?,
            q_dims,
            kv_dims,
        })
    }
}

impl<T: KernelElement> BackwardCaseBuffers<T> {
    /// Inputs for `case`, with O and LSE from the forward kernel under `case.mask`.
    pub fn new(gpu: &Gpu, case: &Case) -> Result<Self> {
        let mut fwd = CaseBuffers::new(gpu, case)?;
        gpu.forward_elapsed_ms(&mut fwd, &gpu.upload_mask(&case.mask, case.head_dim)?, 1)?;
        let (nq, nkv) = (fwd.q_dims.iter().product(), fwd.kv_dims.iter().product());
        Ok(Self {
            d_out: gpu.upload(&random::<T>(nq, 4))?,
            dq: gpu.zeros(nq)?,
            dk: gpu.zeros(nkv)?,
            dv: gpu.zeros(nkv)?,
            fwd,
        })
    }
}

impl Gpu {
    /// Milliseconds between two CUDA events around `launches` calls of `launch`.
    fn events_ms(&self, launches: usize, mut launch: impl FnMut() -> Result<()>) -> Result<f64> {
        let ctx = self.stream().context().clone();
        let start = ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
        let end = ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
        start.record(self.stream())?;
        for _ in 0..launches {
            launch()?;
        }
        end.record(self.stream())?;
        Ok(start.elapsed_ms(&end)? as f64)
    }

    /// Median of `iters` single-launch timings after `warmup` untimed launches.
    fn median_ms(&self, warmup: usize, iters: usize, mut launch: impl FnMut() -> Result<()>) -> Result<f64> {
        self.events_ms(warmup, &mut launch)?;
        let mut times = (0..iters).map(|_| self.events_ms(1, &mut launch)).collect::<Result<Vec<_>>>()?;
        times.sort_by(f64::total_cmp);
        Ok(times.get(times.len() / 2).copied().unwrap_or(f64::NAN))
    }

    fn forward_on<T: KernelElement>(&self, b: &mut CaseBuffers<T>, mask: &DeviceMask) -> Result<()> {
        self.attention_forward(
            &DeviceTensor::contiguous(&b.q, b.q_dims),
            &DeviceTensor::contiguous(&b.k, b.kv_dims),
            &DeviceTensor::contiguous(&b.v, b.kv_dims),
            mask,
            None,
            &mut DeviceTensorMut::contiguous(&mut b.out, b.q_dims),
            &mut b.lse.as_view_mut(),
        )
    }

    fn backward_on<T: KernelElement>(
        &self,
        b: &mut BackwardCaseBuffers<T>,
        mask: &DeviceBackwardMask,
        deterministic: bool,
    ) -> Result<()> {
        let f = &b.fwd;
        self.attention_backward(
            &DeviceTensor::contiguous(&f.q, f.q_dims),
            &DeviceTensor::contiguous(&f.k, f.kv_dims),
            &DeviceTensor::contiguous(&f.v, f.kv_dims),
            &DeviceTensor::contiguous(&f.out, f.q_dims),
            &f.lse.as_view(),
            &DeviceTensor::contiguous(&b.d_out, f.q_dims),
            mask,
            None,
            deterministic,
            &mut DeviceTensorMut::contiguous(&mut b.dq, f.q_dims),
            &mut DeviceTensorMut::contiguous(&mut b.dk, f.kv_dims),
            &mut DeviceTensorMut::contiguous(&mut b.dv, f.kv_dims),
        )
    }

    /// Milliseconds of `launches` back-to-back forward launches with `mask` (uploaded
    /// by [`Gpu::upload_mask`]) on `bufs`, between two CUDA events.
    pub fn forward_elapsed_ms<T: KernelElement>(
        &self,
        bufs: &mut CaseBuffers<T>,
        mask: &DeviceMask,
        launches: usize,
    ) -> Result<f64> {
        self.events_ms(launches, || self.forward_on(bufs, mask))
    }

    /// Median milliseconds of `iters` single forward launches with `mask` on `bufs`,
    /// after `warmup` untimed ones. The mask upload is outside the timing (made once
    /// per mask, like FlexAttention's block mask, whose build is timed separately).
    pub fn time_forward<T: KernelElement>(
        &self,
        bufs: &mut CaseBuffers<T>,
        mask: &Mask,
        warmup: usize,
        iters: usize,
    ) -> Result<f64> {
        let device_mask = self.upload_mask(mask, bufs.q_dims[3])?;
        self.median_ms(warmup, iters, || self.forward_on(bufs, &device_mask))
    }

    /// Median milliseconds of `iters` single calls of the naive baseline
    /// ([`Gpu::naive_attention`]: scores, softmax and P V per head, scratch allocation
    /// included) with `mask` on `bufs`, after `warmup` untimed ones (the mask upload is
    /// outside the timing).
    pub fn time_naive<T: KernelElement>(
        &self,
        bufs: &mut CaseBuffers<T>,
        mask: &Mask,
        warmup: usize,
        iters: usize,
    ) -> Result<f64> {
        let intervals = self.upload(mask.as_flat())?;
        self.median_ms(warmup, iters, || {
            self.naive_attention(
                &DeviceTensor::contiguous(&bufs.q, bufs.q_dims),
                &DeviceTensor::contiguous(&bufs.k, bufs.kv_dims),
                &DeviceTensor::contiguous(&bufs.v, bufs.kv_dims),
                &intervals.as_view(),
                None,
                &mut DeviceTensorMut::contiguous(&mut bufs.out, bufs.q_dims),
                &mut bufs.lse.as_view_mut(),
            )
        })
    }

    /// Milliseconds of `launches` back-to-back backward passes (preprocessing, main
    /// kernel, dQ kernel; scratch allocation included, as a framework's caching
    /// allocator would serve it) with `mask` on `bufs`, between two CUDA events.
    pub fn backward_elapsed_ms<T: KernelElement>(
        &self,
        bufs: &mut BackwardCaseBuffers<T>,
        mask: &DeviceBackwardMask,
        deterministic: bool,
        launches: usize,
    ) -> Result<f64> {
        self.events_ms(launches, || self.backward_on(bufs, mask, deterministic))
    }

    /// Median milliseconds of `iters` single backward passes with `mask` on `bufs`,
    /// after `warmup` untimed ones (the mask upload is outside the timing).
    pub fn time_backward<T: KernelElement>(
        &self,
        bufs: &mut BackwardCaseBuffers<T>,
        mask: &Mask,
        deterministic: bool,
        warmup: usize,
        iters: usize,
    ) -> Result<f64> {
        let device_mask = self.upload_backward_mask(mask, bufs.fwd.q_dims[3])?;
        self.median_ms(warmup, iters, || self.backward_on(bufs, &device_mask, deterministic))
    }
}
